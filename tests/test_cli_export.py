"""``cellflow benchmark --export cell-eval FOLDER``: the option, its checks, and what it passes on."""

from __future__ import annotations

import pytest

import cellflow as cf
from cellflow.cli import main


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    adata = cf.datasets.simulate_perturbseq(
        n_cells=400, n_genes=20, n_cell_types=2, n_perturbations=5, n_combinations=5, seed=1
    )
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    adata.write_h5ad(path)
    return path


def test_export_option_reaches_run_benchmark(tiny_file, tmp_path, monkeypatch):
    # The whole benchmark with --export, scored by cell-eval, runs in tests/evaluation/test_run.py;
    # here only what the command passes on.
    import cellflow.evaluation

    calls = []
    monkeypatch.setattr(cellflow.evaluation, "run_benchmark", lambda *a, **k: calls.append(k))
    base = ["benchmark", "--data", str(tiny_file), "--split", "singles", "--out", str(tmp_path / "out")]
    assert main([*base, "--export", "cell-eval", str(tmp_path / "files")]) == 0
    assert main(base) == 0
    assert [c["export_cell_eval"] for c in calls] == [str(tmp_path / "files"), None]


def test_export_options_are_checked_before_training(tiny_file, tmp_path, capsys):
    base = ["benchmark", "--data", str(tiny_file), "--split", "combinations", "--out", str(tmp_path / "out")]
    assert main([*base, "--export", "csv", str(tmp_path / "files")]) == 1
    captured = capsys.readouterr()
    assert "--export takes FORMAT FOLDER" in captured.err and "cell-eval" in captured.err
    assert "[1/5]" not in captured.out  # nothing read or trained
    (tmp_path / "a_file").write_text("")
    assert main([*base, "--export", "cell-eval", str(tmp_path / "a_file")]) == 1
    assert "is a file" in capsys.readouterr().err
    assert main([*base, "--export", "cell-eval"]) == 2  # FORMAT without FOLDER: a usage error
    assert not (tmp_path / "out").exists() and not (tmp_path / "files").exists()
