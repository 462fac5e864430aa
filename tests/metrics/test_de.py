"""differential_expression, de_scores and differential_expression_score on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from cellflow.metrics import de_scores, differential_expression, differential_expression_score


def _p_two_sided(u1: float, n1: int, n2: int, tie_sizes: list[int]) -> float:
    """Normal approximation of the rank-sum test with tie and continuity correction, written out."""
    n = n1 + n2
    u = max(u1, n1 * n2 - u1)
    tie_term = sum(t**3 - t for t in tie_sizes)
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))))
    z = (u - n1 * n2 / 2 - 0.5) / sigma
    return min(1.0, math.erfc(z / math.sqrt(2)))  # 2 * (1 - Phi(z))


def test_rank_sum_p_values_and_fold_changes_by_hand():
    # Gene 0: cells 1, 2, 3 against control 4, 5, 6, 7: no ties, U1 = 0.
    # Gene 1: cells 0, 0, 1 against control 0, 1, 1, 1: tied groups of 3 zeros and 4 ones;
    #   ranks: zeros 2 (average of 1..3), ones 5.5 (average of 4..7); R1 = 2 + 2 + 5.5, U1 = 9.5 - 6 = 3.5.
    # Gene 2: all zero on both sides: p = 1, fold change 0 (0 / 0 counts as no change).
    cells = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [3.0, 1.0, 0.0]])
    control = np.array([[4.0, 0.0, 0.0], [5.0, 1.0, 0.0], [6.0, 1.0, 0.0], [7.0, 1.0, 0.0]])
    table = differential_expression(cells, control, genes=["a", "b", "c"])
    assert list(table.index) == ["a", "b", "c"]
    expected_p = [_p_two_sided(0.0, 3, 4, []), _p_two_sided(3.5, 3, 4, [3, 4]), 1.0]
    np.testing.assert_allclose(table["p_value"], expected_p, rtol=1e-12)
    np.testing.assert_allclose(table["statistic"], [0.0, 3.5, 6.0])
    # Benjamini-Hochberg over the three genes: sorted p (p_a, p_b, 1) scaled by 3/rank, made monotone.
    p_a, p_b = expected_p[:2]
    bh_b = min(p_b * 3 / 2, 1.0)
    np.testing.assert_allclose(table["fdr"], [min(p_a * 3, bh_b), bh_b, 1.0], rtol=1e-12)
    # log2 of the ratio of geometric means in count space: expm1(mean log1p) per side.
    expected_lfc = [np.log2(np.expm1(2.0) / np.expm1(5.5)), np.log2(np.expm1(1 / 3) / np.expm1(0.75)), 0.0]
    np.testing.assert_allclose(table["log2_fold_change"], expected_lfc, rtol=1e-12)


def test_one_sided_zero_gives_an_infinite_fold_change_and_sparse_input_works():
    cells = sparse.csr_matrix(np.array([[0.0, 1.0], [0.0, 2.0]]))
    control = np.array([[1.0, 0.0], [2.0, 0.0], [1.5, 0.0]])
    table = differential_expression(cells, control)
    assert list(table.index) == [0, 1]
    assert table["log2_fold_change"].tolist() == [-np.inf, np.inf]


def test_a_gene_constant_in_both_groups_gets_p_one_whatever_scipy_returns(monkeypatch):
    import scipy.stats

    x = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])
    ref = np.array([[0.0, 0.0], [0.0, 0.5], [0.0, 0.2]])
    real = scipy.stats.mannwhitneyu

    def nan_for_constant(a, b, **kwargs):  # what newer scipy releases return for 0 / 0
        result = real(a, b, **kwargs)
        pvalue = np.where(np.ptp(np.vstack([a, b]), axis=0) == 0, np.nan, result.pvalue)
        return type(result)(result.statistic, pvalue)

    monkeypatch.setattr(scipy.stats, "mannwhitneyu", nan_for_constant)
    table = differential_expression(x, ref)
    assert table["p_value"].iloc[0] == 1.0 and table["fdr"].iloc[0] == 1.0
    assert 0 < table["p_value"].iloc[1] < 1


def test_differential_expression_errors():
    ok = np.ones((3, 2))
    with pytest.raises(ValueError, match="same number of genes"):
        differential_expression(ok, np.ones((3, 3)))
    with pytest.raises(ValueError, match="no cells"):
        differential_expression(np.ones((0, 2)), ok)
    with pytest.raises(ValueError, match="negative values"):
        differential_expression(-ok, ok)
    with pytest.raises(ValueError, match="names"):
        differential_expression(ok, ok, genes=["a"])


def _table(fdr, lfc) -> pd.DataFrame:
    return pd.DataFrame({"fdr": fdr, "log2_fold_change": lfc}, index=[f"g{i}" for i in range(len(fdr))])


def test_overlap_rankings_by_hand():
    # True DE genes (FDR < 0.05) g0, g1, g2 with |lfc| 3, 1, 2: ranked g0, g2, g1; N = 3.
    # Predicted DE genes g1, g2, g4, g5 with |lfc| inf, 1, 5, 5: ranked g1, g4, g5 (tie: gene order), g2.
    # g3 has FDR exactly 0.05 in the truth: not significant (the threshold is strict).
    true_de = _table([0.01, 0.02, 0.001, 0.05, 0.5, 0.5, 0.9], [3.0, -1.0, 2.0, 9.0, 0.0, 0.0, 0.0])
    pred_de = _table([0.5, 0.01, 0.03, 0.5, 0.04, 0.001, 0.9], [0.0, -np.inf, 1.0, 0.0, 5.0, -5.0, 0.0])
    scores = de_scores(pred_de, true_de)
    assert scores["overlap_at_N"] == pytest.approx(1 / 3)  # {g0, g2, g1} & {g1, g4, g5}
    assert scores["precision_at_N"] == pytest.approx(2 / 4)  # M = 4: {g0, g2, g1} & {g1, g4, g5, g2}
    assert scores["de_sig_genes_recall"] == pytest.approx(2 / 3)  # g1 and g2 found
    assert scores["de_direction_match"] == pytest.approx(2 / 3)  # g0: + vs 0; g1: - vs -; g2: + vs +
    assert scores["de_nsig_counts_real"] == 3 and scores["de_nsig_counts_pred"] == 4
    top2 = de_scores(pred_de, true_de, k=2)
    assert top2["overlap_at_2"] == 0.0  # {g0, g2} & {g1, g4}
    assert top2["precision_at_2"] == 0.0
    assert de_scores(pred_de, true_de, k=10)["overlap_at_10"] == pytest.approx(1 / 3)  # k capped at N


def test_spearman_and_auc_by_hand():
    # True DE genes g0..g3 (lfc 1, 2, 3, 4); prediction reverses the order of the last three.
    true_de = _table([0.01, 0.01, 0.01, 0.01, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0, 0.0, 0.0])
    pred_de = _table([0.1, 1e-12, 0.2, 0.3, 0.5, 0.01], [1.0, 4.0, 3.0, 2.0, 0.0, 0.0])
    scores = de_scores(pred_de, true_de)
    # Ranks (1, 2, 3, 4) vs (1, 4, 3, 2): 1 - 6 * (0 + 4 + 0 + 4) / (4 * 15) = 0.2
    assert scores["de_spearman_lfc_sig"] == pytest.approx(0.2)
    # Scores -log10(clip(fdr, 1e-10)): g1 10, g5 2, g0 1, g2 0.70, g3 0.52, g4 0.30; labels 1 0 1 1 1 0.
    # AP: recall steps 1/4 at precision 1, then 1/4 each at precisions 2/3, 3/4, 4/5.
    assert scores["pr_auc"] == pytest.approx(0.25 * (1 + 2 / 3 + 3 / 4 + 4 / 5), rel=1e-6)
    # ROC AUC: of 4 x 2 positive-negative pairs, g5 beats g0, g2, g3 and g4 beats none: 1 - 3 / 8.
    assert scores["roc_auc"] == pytest.approx(5 / 8)


def _screen(seed: int = 0):
    """Control cells and perturbed cells with 5 strongly up-regulated genes of 30 (log1p of Poisson counts)."""
    rng = np.random.default_rng(seed)
    control = np.log1p(rng.poisson(5.0, (60, 30)))
    truth = np.log1p(rng.poisson(np.r_[[25.0] * 5, [5.0] * 25], (60, 30)))
    return control, truth


def test_perfect_prediction_scores_one():
    control, truth = _screen()
    true_de = differential_expression(truth, control)
    scores = de_scores(true_de, true_de)
    assert scores["de_nsig_counts_real"] >= 5
    for metric in ("overlap_at_N", "precision_at_N", "de_sig_genes_recall", "de_direction_match"):
        assert scores[metric] == 1.0, metric
    assert scores["de_spearman_lfc_sig"] == pytest.approx(1.0)
    assert scores["pr_auc"] == pytest.approx(1.0) and scores["roc_auc"] == pytest.approx(1.0)
    assert differential_expression_score(truth, truth, control) == 1.0


def test_prediction_equal_to_control_finds_nothing():
    control, truth = _screen()
    true_de = differential_expression(truth, control)
    pred_de = differential_expression(control, control)  # every gene tied: p = 1, no fold change
    assert (pred_de["p_value"] == 1.0).all() and (pred_de["log2_fold_change"] == 0.0).all()
    scores = de_scores(pred_de, true_de)
    n_true = scores["de_nsig_counts_real"]
    assert scores["de_nsig_counts_pred"] == 0
    assert scores["overlap_at_N"] == scores["precision_at_N"] == scores["de_sig_genes_recall"] == 0.0
    assert scores["de_direction_match"] == 0.0  # sign 0 never matches
    # All predicted scores tie: the average precision is the share of true DE genes, the ROC AUC one half.
    assert scores["pr_auc"] == pytest.approx(n_true / 30)
    assert scores["roc_auc"] == pytest.approx(0.5)
    assert differential_expression_score(control, truth, control) == 0.0


def test_no_true_de_genes_scores_zero_overlap_and_nan_elsewhere():
    control, _ = _screen()
    true_de = differential_expression(control, control)
    scores = de_scores(true_de, true_de)
    assert scores["de_nsig_counts_real"] == 0
    assert scores["overlap_at_N"] == 0.0  # cell-eval: nothing to recover counts as 0, even for a perfect prediction
    for metric in ("de_sig_genes_recall", "de_direction_match", "de_spearman_lfc_sig", "pr_auc", "roc_auc"):
        assert np.isnan(scores[metric]), metric


def test_pred_control_is_the_reference_of_the_prediction():
    control, truth = _screen()
    # Shifted control cells tested against themselves show nothing; shifted perturbed cells tested
    # against the shifted control cells give the true p-values, so the same DE genes.
    shifted = control + 1.0
    assert differential_expression_score(shifted, truth, control, pred_control=shifted) == 0.0
    assert differential_expression_score(shifted, truth, control) > 0.0  # against the real control: changed
    assert differential_expression_score(truth + 1.0, truth, control, pred_control=control + 1.0) == 1.0


def test_de_scores_errors():
    table = _table([0.01, 0.5], [1.0, 0.0])
    with pytest.raises(ValueError, match="same genes"):
        de_scores(table, table.iloc[::-1])
    with pytest.raises(ValueError, match="lacks the column"):
        de_scores(table.drop(columns="fdr"), table)
    with pytest.raises(TypeError, match="DataFrame"):
        de_scores(table.to_numpy(), table)
    with pytest.raises(ValueError, match="fdr_threshold"):
        de_scores(table, table, fdr_threshold=0.0)
    with pytest.raises(ValueError, match="`k`"):
        de_scores(table, table, k=0)
