"""cf.pl.benchmark: one point per scored row, the noise floor as a band on the right side, the tables it reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cellflow as cf
from tests.pl._helpers import collection

CONDITIONS = ["A+B", "C+D", "E+F"]


def _results(seeds: int = 1) -> pd.DataFrame:
    """A results table in run_benchmark's layout: 3 conditions x 2 cell types, 3 methods and the noise floor."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        for condition in CONDITIONS:
            for cell_type in ("K562", "RPE1"):
                label = {"condition": condition, "cell_type": cell_type, "n_cells": 50, "kind": "combination"}
                for method in ("control", "additive", "cellflow", "noise_floor"):
                    score = {"pearson_delta": rng.uniform(0, 1), "energy_distance": rng.uniform(0, 5)}
                    rows.append({"method": method, **label, **score, "note": np.nan, "seed": seed})
    rows.append({"method": "linear", "condition": "A+B", "cell_type": "K562", "note": "cannot predict", "seed": 0})
    return pd.DataFrame(rows)


def _inside(band, x: float, y: float) -> bool:
    return any(path.contains_point((x, y)) for path in band.get_paths())


def test_one_point_per_scored_row_and_method():
    results = _results()
    ax = cf.pl.benchmark(results, metric="pearson_delta", show=False)
    for method in ("control", "additive", "cellflow"):
        rows = results[results["method"] == method]
        points = collection(ax, method).get_offsets()
        assert len(points) == len(rows) == 6
        np.testing.assert_allclose(np.sort(points[:, 1]), np.sort(rows["pearson_delta"]))
    assert len(ax.get_xticklabels()) == 6  # each condition in each cell type
    assert "K562" in ax.get_xticklabels()[0].get_text()
    assert "linear" not in [c.get_label() for c in ax.collections]  # it scored nothing


def test_methods_are_ordered_and_chosen():
    ax = cf.pl.benchmark(_results(), show=False)
    labels = [c.get_label() for c in ax.collections if c.get_label() != "noise floor"]
    assert labels == ["cellflow", "additive", "control"]  # the report's order: cellflow first
    only = cf.pl.benchmark(_results(), methods=["control"], show=False)
    assert [c.get_label() for c in only.collections] == ["control", "noise floor"]


@pytest.mark.parametrize(("metric", "higher"), [("pearson_delta", True), ("energy_distance", False)])
def test_noise_floor_band_covers_the_better_side(metric, higher):
    results = _results()
    ax = cf.pl.benchmark(results, metric=metric, show=False)
    band = collection(ax, "noise floor")
    floor = results[results["method"] == "noise_floor"]
    names = [t.get_text() for t in ax.get_xticklabels()]
    assert len(floor) == len(names)
    for x, name in enumerate(names):
        condition, cell_type = name.removesuffix(")").split(" (")
        value = floor.loc[(floor["condition"] == condition) & (floor["cell_type"] == cell_type), metric].item()
        better, worse = (value + 0.01, value - 0.01) if higher else (value - 0.01, value + 0.01)
        assert _inside(band, x, better) and not _inside(band, x, worse)


def test_several_seeds_give_several_points_and_the_band_at_their_mean():
    results = _results(seeds=2)
    ax = cf.pl.benchmark(results, show=False)
    assert len(collection(ax, "cellflow").get_offsets()) == 12
    floor = results[(results["method"] == "noise_floor") & (results["condition"] == "A+B")]
    mean = floor[floor["cell_type"] == "K562"]["pearson_delta"].mean()
    x = [t.get_text() for t in ax.get_xticklabels()].index("A+B (K562)")
    band = collection(ax, "noise floor")
    assert _inside(band, x, mean + 0.005) and not _inside(band, x, mean - 0.005)


def test_reads_results_csv_and_its_folder(tmp_path):
    results = _results()
    results.to_csv(tmp_path / "results.csv", index=False)
    from_table = collection(cf.pl.benchmark(results, show=False), "cellflow").get_offsets()
    for source in (tmp_path, tmp_path / "results.csv", str(tmp_path)):
        np.testing.assert_allclose(
            collection(cf.pl.benchmark(source, show=False), "cellflow").get_offsets(), from_table
        )


def test_plots_the_harness_table(screen, trained):
    """The table score_held_out writes for a real model and baseline (2 combinations x 2 cell types)."""
    from cellflow.evaluation import ControlBaseline, score_held_out

    adata, frame, split, train = screen
    results = score_held_out(
        adata,
        frame,
        split.held_out,
        model=trained,
        baselines=[ControlBaseline().fit(train)],
        covariate_keys=["cell_type"],
        vae_ceiling=False,
        n_cells=30,
    )
    ax = cf.pl.benchmark(results, metric="pearson_delta_top20", show=False)
    assert [c.get_label() for c in ax.collections] == ["cellflow", "control", "noise floor"]
    assert len(collection(ax, "cellflow").get_offsets()) == len(ax.get_xticklabels()) == 4


def test_refuses_bad_input(tmp_path):
    results = _results()
    with pytest.raises(ValueError, match="not a column"):
        cf.pl.benchmark(results, metric="accuracy", show=False)
    with pytest.raises(ValueError, match="not in the results"):
        cf.pl.benchmark(results, methods=["gears"], show=False)
    with pytest.raises(ValueError, match="no column"):
        cf.pl.benchmark(results.drop(columns="method"), show=False)
    with pytest.raises(FileNotFoundError):
        cf.pl.benchmark(tmp_path, show=False)
    odd = results.assign(score=results["pearson_delta"])
    with pytest.raises(ValueError, match="higher_is_better"):
        cf.pl.benchmark(odd, metric="score", show=False)
    assert cf.pl.benchmark(odd, metric="score", higher_is_better=True, show=False) is not None
    with pytest.raises(ValueError, match="No method"):
        cf.pl.benchmark(results, methods=["linear"], show=False)
