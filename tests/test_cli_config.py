"""`cellflow VERB --config FILE`: options from TOML or YAML, the command line winning; progress bars at a terminal."""

from __future__ import annotations

import sys

import pytest

import cellflow as cf
from cellflow.cli import main


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    adata = cf.datasets.simulate_perturbseq(n_cells=300, n_genes=30, n_cell_types=1, seed=0)
    path = tmp_path_factory.mktemp("data") / "screen.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture
def recorded(monkeypatch):
    """Record what `cellflow train` passes to CellFlow (no training, nothing saved)."""
    calls = {"init": [], "train": [], "save": []}
    original_init = cf.CellFlow.__init__

    def init(self, adata, **kwargs):
        calls["init"].append(kwargs)
        original_init(self, adata, **kwargs)

    monkeypatch.setattr(cf.CellFlow, "__init__", init)
    monkeypatch.setattr(cf.CellFlow, "train", lambda self, **kw: calls["train"].append(kw) or self)
    monkeypatch.setattr(cf.CellFlow, "save", lambda self, path, **kw: calls["save"].append(str(path)))
    return calls


def test_a_toml_file_gives_the_options_and_the_command_line_wins(tmp_path, data_file, recorded, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # so that only `quiet` hides the bars
    config = tmp_path / "train.toml"
    config.write_text(
        f'data = "{data_file}"\nout = "{tmp_path / "from_file"}"\nflow-steps = 7\nvae_epochs = 3\n'
        "latent-dim = 6\ncovariate-keys = []\nquiet = true\n"
    )
    assert main(["train", "--config", str(config), "--flow-steps", "11"]) == 0
    assert recorded["train"][0]["flow_steps"] == 11  # the command line wins
    assert recorded["train"][0]["vae_epochs"] == 3  # the file, with either spelling of the name
    assert recorded["init"][0]["latent_dim"] == 6
    assert recorded["save"] == [str(tmp_path / "from_file")]
    assert recorded["train"][0]["progress_bar"] is False


def test_a_yaml_file_works_the_same(tmp_path, data_file, recorded):
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {data_file}\nout: {tmp_path / 'm'}\nreflow-rounds: 0\nquiet: true\n")
    assert main(["train", f"--config={config}"]) == 0
    assert recorded["train"][0]["reflow_rounds"] == 0


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("flow-stepz = 3\n", ".toml", "unknown option 'flow-stepz'; the options of this verb are: "),
        ("flow-steps = [\n", ".toml", "is not valid TOML"),
        ("- 1\n- 2\n", ".yaml", "must hold a table of options"),
        ("quiet = 1\n", ".toml", "quiet is a switch; give true or false"),
        ("data = {a = 1}\n", ".toml", "data takes a value"),
        ("", ".json", "ends in .toml, .yaml or .yml"),
    ],
)
def test_bad_config_files_get_one_line_that_names_the_problem(tmp_path, capsys, content, suffix, message):
    config = tmp_path / f"c{suffix}"
    config.write_text(content)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cellflow: error: --config") and message in lines[0], lines
    assert not (tmp_path / "m").exists()


def test_a_missing_config_file_or_value_is_refused(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.toml")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--config"]) == 1
    assert "needs a file" in capsys.readouterr().err
    assert main(["--config", "x.toml"]) == 1
    assert "goes after the verb" in capsys.readouterr().err
    assert main(["--config", "x.toml", "train", "--out", str(tmp_path / "m")]) == 1
    assert "goes after the verb" in capsys.readouterr().err
    assert main(["train", "--conf", "x.toml", "--data", "d", "--out", str(tmp_path / "m")]) == 1
    assert "spell out --config" in capsys.readouterr().err


def test_progress_bars_only_at_a_terminal(tmp_path, data_file, recorded, monkeypatch):
    args = ["train", "--data", str(data_file), "--out", str(tmp_path / "m")]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert main(args) == 0
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(args) == 0
    assert main([*args, "--quiet"]) == 0
    assert [call["progress_bar"] for call in recorded["train"]] == [False, True, False]
