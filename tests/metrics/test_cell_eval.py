"""cf.metrics against cell-eval itself: the Virtual Cell Challenge's DE score, discrimination score, MAE, score.

cell-eval (a declared test extra) runs once per module on a small real fixture: five Papalexi
2021 knockouts (four of whose targets are measured genes) and control cells. Its DE runs
through numba, compiled on first use, which takes most of this module's few seconds.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import polars as pl
import pytest
from cell_eval import MetricsEvaluator, build_base_mean_adata, score_agg_metrics

from cellflow.metrics import (
    VCC_METRICS,
    de_scores,
    differential_expression,
    discrimination_score,
    log_normalize,
    mae_mean,
    mse_mean,
    vcc_score,
)
from tests.conftest import shared_file

PERTURBATIONS = ["CMTM6", "IFNGR2", "IRF1", "JAK2", "STAT1"]  # sorted, as cell-eval orders them
N_CELLS, N_GENES = 50, 150
DE_METRICS = [
    "overlap_at_N",
    "precision_at_N",
    "de_sig_genes_recall",
    "de_direction_match",
    "de_spearman_lfc_sig",
    "pr_auc",
    "roc_auc",
    "de_nsig_counts_real",
    "de_nsig_counts_pred",
]


def _adata(x: np.ndarray, labels: np.ndarray, genes) -> ad.AnnData:
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Real and predicted cells, both log-normalised (float64, dense), and cell-eval's results on them.

    The predictions are other cells of the real experiment: fresh cells of the same knockout
    for STAT1 and IRF1, the cells of each other's knockout for JAK2 and IFNGR2 (the two
    receptor-side knockouts, so discrimination has something to get wrong), and control cells
    for CMTM6 (a prediction equal to control). The prediction's control cells are other control
    cells than the real ones, so a mix-up of the two controls would show.
    """
    screen = ad.read_h5ad(shared_file("papalexi2021_thp1_eccite_299g.h5ad"))
    labels = screen.obs["perturbation"].astype(str).to_numpy()
    mean_counts = np.asarray(screen.X.mean(axis=0)).ravel()
    targets = [g for g in PERTURBATIONS if g in screen.var_names]
    others = [g for g in screen.var_names[np.argsort(-mean_counts)] if g not in targets]
    genes = sorted([*targets, *others[: N_GENES - len(targets)]])
    rng = np.random.default_rng(0)
    draws = {p: rng.permutation(np.flatnonzero(labels == p))[: 2 * N_CELLS] for p in ["control", *PERTURBATIONS]}
    counts = screen[:, genes].X

    def cells(label: str, half: int) -> np.ndarray:
        rows = draws[label][half * N_CELLS : (half + 1) * N_CELLS]
        return log_normalize(counts[rows]).astype(np.float64)

    source = {"CMTM6": "control", "IFNGR2": "JAK2", "IRF1": "IRF1", "JAK2": "IFNGR2", "STAT1": "STAT1"}
    order = ["control", *PERTURBATIONS]
    real_x = {p: cells(p, 0) for p in order}
    pred_x = {"control": cells("control", 1), **{p: cells(source[p], 1) for p in PERTURBATIONS}}
    names = np.repeat(order, N_CELLS)
    real = _adata(np.vstack([real_x[p] for p in order]), names, genes)
    pred = _adata(np.vstack([pred_x[p] for p in order]), names, genes)
    options = {"control_pert": "control", "pert_col": "perturbation", "num_threads": 1}
    evaluator = MetricsEvaluator(pred.copy(), real.copy(), outdir=str(tmp_path_factory.mktemp("ce")), **options)
    skip = ["clustering_agreement", "pearson_edistance"]
    results, agg = evaluator.compute(profile="full", skip_metrics=skip, write_csv=False, break_on_error=True)
    baseline = build_base_mean_adata(real.copy(), pert_col="perturbation", control_pert="control")
    base_evaluator = MetricsEvaluator(baseline, real.copy(), outdir=str(tmp_path_factory.mktemp("ce_base")), **options)
    _, base_agg = base_evaluator.compute(profile="vcc", write_csv=False, break_on_error=True)
    return {
        "genes": np.asarray(genes),
        "real": real_x,
        "pred": pred_x,
        "baseline": baseline,
        "results": results.to_pandas().set_index("perturbation").loc[PERTURBATIONS],
        "agg": agg,
        "base_agg": base_agg,
        "real_de": evaluator.de_comparison.real.data,
    }


def _ours(real: dict, pred: dict, genes) -> pd.DataFrame:
    """Our metrics per perturbation: DE scores, MAE, MSE, discrimination (L1, L2, cosine)."""
    rows = {}
    for p in PERTURBATIONS:
        true_de = differential_expression(real[p], real["control"], genes=genes)
        pred_de = differential_expression(pred[p], pred["control"], genes=genes)
        rows[p] = de_scores(pred_de, true_de) | {
            "overlap_at_50": de_scores(pred_de, true_de, k=50)["overlap_at_50"],
            "mae": mae_mean(pred[p], real[p]),
            "mse": mse_mean(pred[p], real[p]),
        }
    ours = pd.DataFrame(rows).T
    true_changes = np.stack([real[p].mean(0) - real["control"].mean(0) for p in PERTURBATIONS])
    pred_changes = np.stack([pred[p].mean(0) - pred["control"].mean(0) for p in PERTURBATIONS])
    exclude = genes[None, :] == np.array(PERTURBATIONS)[:, None]
    for metric in ("l1", "l2", "cosine"):
        ours[f"discrimination_score_{metric}"] = discrimination_score(
            pred_changes, true_changes, metric=metric, exclude=exclude, convention="cell_eval"
        )
    return ours


def test_differential_expression_is_pdex_as_cell_eval_runs_it(case):
    # cell-eval keeps p-values, FDR and fold changes as float32; ours are float64.
    theirs = case["real_de"].to_pandas()
    for p in PERTURBATIONS:
        ours = differential_expression(case["real"][p], case["real"]["control"], genes=case["genes"])
        table = theirs[theirs["target"].astype(str) == p].set_index("feature").loc[ours.index]
        for column in ("p_value", "fdr", "log2_fold_change"):
            np.testing.assert_allclose(ours[column].astype(np.float32), table[column], rtol=2e-6, err_msg=column)
    assert np.isinf(theirs["log2_fold_change"]).any()  # genes silent on one side, ranked first by cell-eval


def test_de_scores_match_cell_eval(case):
    ours = _ours(case["real"], case["pred"], case["genes"])
    theirs = case["results"]
    for metric in [*DE_METRICS, "overlap_at_50"]:
        np.testing.assert_allclose(ours[metric], theirs[metric].astype(float), rtol=1e-12, err_msg=metric)
    # The fixture exercises the cases that matter: perfect-ish, swapped, control-like, no true DE genes.
    assert ours["overlap_at_N"].nunique() >= 3
    assert (ours["de_nsig_counts_real"] == 0).any() and (ours["de_nsig_counts_real"] >= 5).any()


def test_discrimination_mae_and_mse_match_cell_eval(case):
    ours = _ours(case["real"], case["pred"], case["genes"])
    theirs = case["results"]
    for metric in ("discrimination_score_l1", "discrimination_score_l2", "discrimination_score_cosine"):
        np.testing.assert_array_equal(ours[metric], theirs[metric], err_msg=metric)
    # cell-eval averages the cells in polars (float64 here): equal to float rounding.
    for metric in ("mae", "mse"):
        np.testing.assert_allclose(ours[metric], theirs[metric], rtol=1e-10, err_msg=metric)
    assert ours["discrimination_score_l1"].min() < 1.0  # the swapped knockouts are not all found


def test_vcc_score_matches_score_agg_metrics_against_the_cell_mean_baseline(case):
    real, genes = case["real"], case["genes"]
    # cell-eval's cell-mean baseline: every perturbation predicted as the mean of all pseudobulks
    # (control's included), as constant cells, next to the real control cells.
    profile = np.mean([real[p].mean(0) for p in ["control", *PERTURBATIONS]], axis=0)
    baseline_x = case["baseline"].X
    labels = case["baseline"].obs["perturbation"].astype(str).to_numpy()
    np.testing.assert_allclose(baseline_x[labels == "STAT1"], np.tile(profile, (N_CELLS, 1)), rtol=1e-12)
    baseline = {"control": real["control"], **{p: np.tile(profile, (N_CELLS, 1)) for p in PERTURBATIONS}}
    means = _ours(real, case["pred"], genes)[list(VCC_METRICS)].mean()
    base_means = _ours(real, baseline, genes)[list(VCC_METRICS)].mean()
    columns = ["statistic", *VCC_METRICS]
    theirs = score_agg_metrics(case["agg"].select(columns), case["base_agg"].select(columns))
    theirs = dict(zip(theirs["metric"], theirs["from_baseline"]))
    ours = vcc_score(means, base_means)
    for metric in [*VCC_METRICS, "avg_score"]:
        assert ours[metric] == pytest.approx(theirs[metric], rel=1e-9, abs=1e-12), metric
    assert 0 < ours["avg_score"] < 1


def test_polars_agg_mean_is_the_mean_over_perturbations(case):
    # score_agg_metrics compares the "mean" row of cell-eval's agg_results: the plain mean over perturbations.
    agg = case["agg"].filter(pl.col("statistic") == "mean")
    assert agg["mae"].item() == pytest.approx(case["results"]["mae"].mean(), rel=1e-12)
