"""scanpy's ``ax``, ``show`` and ``save`` in every plot: PNG files written, Axes returned or not, bad flags refused."""

from __future__ import annotations

import warnings

import pytest

import cellflow as cf

PNG = b"\x89PNG\r\n\x1a\n"
HISTORY = {"vae_loss": [3.0, 2.0, 1.0], "flow_loss": [[10, 1.0], [20, 0.5]]}


@pytest.fixture
def plots(held_out, trained):
    """Each plot as ``name -> call(**flags)``, on small inputs."""
    import pandas as pd

    adata, condition, _, pred = held_out
    results = pd.DataFrame(
        {
            "method": ["cellflow", "control", "noise_floor"],
            "condition": [condition] * 3,
            "pearson_delta": [0.8, 0.1, 0.95],
        }
    )
    return {
        "embedding": lambda **kw: cf.pl.embedding(pred, adata, condition, **kw),
        "effect_scatter": lambda **kw: cf.pl.effect_scatter(pred, adata, None, condition=condition, **kw),
        "benchmark": lambda **kw: cf.pl.benchmark(results, **kw),
        "training": lambda **kw: cf.pl.training(HISTORY, **kw),
        "conditions": lambda **kw: cf.pl.conditions(trained, **kw),
    }


NAMES = ["embedding", "effect_scatter", "benchmark", "training", "conditions"]


@pytest.fixture
def scanpy_settings():
    """scanpy's settings, restored afterwards (they are class properties, which monkeypatch cannot restore)."""
    import scanpy as sc

    saved = sc.settings.figdir, sc.settings.autoshow
    yield sc.settings
    sc.settings.figdir, sc.settings.autoshow = saved


@pytest.mark.parametrize("name", NAMES)
def test_save_writes_a_png(plots, name, tmp_path):
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    path = tmp_path / "out" / f"{name}.png"
    result = plots[name](show=False, save=path)
    assert path.read_bytes().startswith(PNG) and path.stat().st_size > 1000
    assert isinstance(result, Figure if name == "training" else Axes)
    plots[name](show=False, save=tmp_path / "plain")  # no extension: a PNG
    assert (tmp_path / "plain.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize("name", NAMES)
def test_save_true_writes_into_scanpys_figdir(plots, name, tmp_path, scanpy_settings):
    scanpy_settings.figdir = tmp_path / "figures"
    plots[name](show=False, save=True)
    written = list((tmp_path / "figures").iterdir())
    assert [p.name for p in written] == [f"{name}.{scanpy_settings.file_format_figs}"]
    assert written[0].stat().st_size > 1000


def test_show_returns_nothing_and_none_follows_scanpy(plots, scanpy_settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Agg cannot show: matplotlib says so
        assert plots["benchmark"](show=True) is None
        scanpy_settings.autoshow = True
        assert plots["training"]() is None
    scanpy_settings.autoshow = False
    assert plots["training"]() is not None


def test_draws_on_the_given_axes(plots):
    import matplotlib.pyplot as plt

    _, axes = plt.subplots(1, 3)
    for ax, name in zip(axes, ["embedding", "effect_scatter", "conditions"]):
        assert plots[name](ax=ax, show=False) is ax
        assert len(ax.collections) >= 1
    with pytest.raises(TypeError, match="Axes"):
        plots["benchmark"](ax="left", show=False)


@pytest.mark.parametrize("name", NAMES)
def test_refuses_bad_flags(plots, name):
    with pytest.raises(TypeError, match="show"):
        plots[name](show="yes")
    with pytest.raises(TypeError, match="save"):
        plots[name](show=False, save=3)
    with pytest.raises(ValueError, match="save"):
        plots[name](show=False, save="")
