"""The benchmark end to end on a tiny simulated screen (scored again by cell-eval), and the report's sentences."""

from __future__ import annotations

import argparse

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from cell_eval._cli import parse_args_run, run_evaluation

import cellflow as cf
from cellflow.cli import main
from cellflow.evaluation._report import losses


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    adata = cf.datasets.simulate_perturbseq(
        n_cells=400, n_genes=20, n_cell_types=2, n_perturbations=5, n_combinations=5, seed=1
    )
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    adata.write_h5ad(path)
    return path


def test_cli_benchmark_end_to_end(tiny_file, tmp_path, capsys):
    out, exported = tmp_path / "bench", tmp_path / "cell_eval_files"
    args = ["benchmark", "--data", str(tiny_file), "--split", "combinations", "--out", str(out)]
    args += ["--covariate-keys", "cell_type", "--flow-steps", "3", "--vae-epochs", "1", "--latent-dim", "4"]
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend the report's plots must not switch away from (a notebook's inline one)
    try:
        assert main([*args, "--accelerator", "cpu", "--export", "cell-eval", str(exported)]) == 0
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    assert "[5/5]" in capsys.readouterr().out  # progress lines
    assert (out / "changes.png").stat().st_size > 0 and (out / "per_condition_pearson_delta.png").exists()
    results = pd.read_csv(out / "results.csv")
    methods = {
        "cellflow",
        "control",
        "additive",
        "training_mean",
        "cell_mean",
        "linear",
        "latent_arithmetic",
        "noise_floor",
    }
    assert set(results["method"]) == methods
    held = set(results["condition"])
    assert held and all("+" in c for c in held)
    # one row per method for every held-out condition and cell type
    assert (results.groupby(["condition", "cell_type"])["method"].nunique() == len(methods)).all()
    assert results["pearson_delta"].notna().all() and results["energy_distance"].notna().all()
    # The Virtual Cell Challenge's metrics, for every row; discrimination among the held-out conditions
    # of a cell type, so in [1/n, 1] with n of them.
    for metric in ("mae", "overlap_at_N", "discrimination_score_l1"):
        assert results[metric].notna().all(), metric
    assert results["overlap_at_N"].between(0, 1).all() and (results["mae"] >= 0).all()
    n_held = results.groupby(["method", "cell_type"])["condition"].transform("nunique")
    assert (results["discrimination_score_l1"] >= 1 / n_held - 1e-12).all()
    assert (results["discrimination_score_l1"] <= 1).all()
    report = (out / "report.md").read_text()
    assert "## Mean over held-out conditions" in report and "## Time taken" in report
    assert "vcc_score" in report and "relative to cell_mean" in report
    assert "## Where cellflow loses to a baseline" in report
    for plot in ("per_condition_pearson_delta.png", "per_condition_energy_distance.png", "changes.png"):
        assert (out / plot).stat().st_size > 1000
    _check_cell_eval_export(results, exported, out, tmp_path / "scored", methods - {"noise_floor"})


def _check_cell_eval_export(results, folder, out, scored, methods):
    """The exported files hold the held-out cells, and cell-eval's own command scores cellflow's as we did."""
    assert {p.name for p in folder.iterdir()} == {"real.h5ad", *(f"pred_{m}.h5ad" for m in methods)}
    real = ad.read_h5ad(folder / "real.h5ad")
    assert set(real.obs["target_gene"]) == set(results["condition"]) | {"non-targeting"}
    assert set(real.obs["celltype"]) == set(results["cell_type"])
    assert "cell-eval run -ap" in (out / "report.md").read_text()
    parser = argparse.ArgumentParser()
    parse_args_run(parser)
    files = ["-ap", str(folder / "pred_cellflow.h5ad"), "-ar", str(folder / "real.h5ad"), "-o", str(scored)]
    run_evaluation(parser.parse_args([*files, "--profile", "vcc", "--celltype-col", "celltype"]))
    ours = results[results["method"] == "cellflow"].set_index(["cell_type", "condition"])
    for cell_type in sorted(set(results["cell_type"])):
        theirs = pd.read_csv(scored / f"{cell_type}_results.csv").set_index("perturbation")
        mine = ours.loc[cell_type].loc[theirs.index]
        np.testing.assert_allclose(mine["overlap_at_N"], theirs["overlap_at_N"], rtol=1e-12)
        np.testing.assert_allclose(mine["discrimination_score_l1"], theirs["discrimination_score_l1"], rtol=1e-12)
        np.testing.assert_allclose(mine["mae"], theirs["mae"], rtol=1e-5)  # cell-eval averages in float32


def test_cli_benchmark_bad_input(tiny_file, tmp_path, capsys):
    base = ["benchmark", "--data", str(tiny_file), "--out", str(tmp_path)]
    assert main([*base, "--split", "covariate_transfer"]) == 1
    assert "covariate_keys" in capsys.readouterr().err
    assert main([*base, "--split", "singles", "--subset-key", "cell_type"]) == 1
    assert main([*base, "--split", "singles", "--subset-key", "cell_type", "--subset-value", "nope"]) == 1
    assert "No cell has" in capsys.readouterr().err


def test_loss_sentences_follow_the_metric_direction():
    results = pd.DataFrame(
        {
            "method": ["cellflow", "additive", "cellflow", "additive"],
            "condition": ["A+B", "A+B", "C+D", "C+D"],
            "pearson_delta": [0.9, 0.5, 0.8, 0.6],  # cellflow better on both
            "energy_distance": [2.0, 1.0, 1.0, 3.0],  # cellflow worse on one, better on average (1.5 vs 2.0)
            "mse_top20": [0.5, 0.1, 0.5, 0.2],  # cellflow worse on both
        }
    )
    sentences = losses(results, ["pearson_delta", "energy_distance", "mse_top20"])
    assert len(sentences) == 1
    assert sentences[0].startswith("cellflow loses to additive on mse_top20") and "2 of 2" in sentences[0]
    assert "0.500 vs 0.150" in sentences[0]


def test_vcc_score_column_is_relative_to_the_cell_mean_baseline():
    from cellflow.evaluation._report import with_vcc_score

    means = pd.DataFrame(
        {"overlap_at_N": [0.6, 0.2, np.nan], "discrimination_score_l1": [0.9, 0.5, 0.7], "mae": [0.1, 0.2, 0.1]},
        index=["cellflow", "cell_mean", "linear"],
    )
    table = with_vcc_score(means)
    # cellflow: (0.6 - 0.2) / 0.8, (0.9 - 0.5) / 0.5, 1 - 0.1 / 0.2 -> mean of 0.5, 0.8, 0.5
    assert table.loc["cellflow", "vcc_score"] == pytest.approx(0.6)
    assert table.loc["cell_mean", "vcc_score"] == 0.0
    assert np.isnan(table.loc["linear", "vcc_score"])  # a metric missing: no combined score
    assert "vcc_score" not in with_vcc_score(means.drop(index="cell_mean")).columns


def test_report_says_when_cellflow_predicts_nothing(tmp_path):
    from cellflow.evaluation._report import write_report

    results = pd.DataFrame(
        {
            "method": ["cellflow", "linear", "noise_floor"],
            "condition": ["A", "A", "A"],
            "pearson_delta": [np.nan, 0.3, 0.9],
            "energy_distance": [np.nan, 2.0, 0.1],
            "note": ["cannot embed A", np.nan, np.nan],
        }
    )
    changes = [{"method": "linear", "condition": "A", "true": np.ones(3), "pred": np.zeros(3)}]
    report = write_report(results, changes, tmp_path, description={"split": "singles"}, times={"total": 1.0})
    text = report.read_text()
    assert "No comparison: cellflow could not predict any held-out condition" in text
    assert "- cellflow, A: cannot embed A" in text and "Nowhere" not in text
