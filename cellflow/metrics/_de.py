"""Differential expression as the Virtual Cell Challenge computes it (cell-eval with pdex), and its scores."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._normalize import _as_dense_2d, _check_same_n_features

if TYPE_CHECKING:
    import pandas as pd

_DE_COLUMNS = ("log2_fold_change", "fdr")


def differential_expression(cells, control, *, genes=None) -> pd.DataFrame:
    r"""Wilcoxon rank-sum test of every gene, ``cells`` against ``control``, with Benjamini-Hochberg FDR.

    The test of the Virtual Cell Challenge: ``pdex(adata, mode="ref", is_log1p=True,
    epsilon=0)`` as ``cell_eval.MetricsEvaluator`` runs it, for one perturbation against the
    control cells.

    Parameters
    ----------
    cells
        Cells of one condition x genes, log-normalised (``log1p`` of counts scaled per cell;
        numpy or scipy.sparse).
    control
        Control cells x genes, log-normalised, same genes in the same order.
    genes
        Gene names for the index of the result (default: gene positions 0, 1, ...).

    Returns
    -------
    pandas.DataFrame
        One row per gene: ``target_mean`` and ``ref_mean`` (geometric means in count space),
        ``log2_fold_change``, ``statistic`` (the U statistic of ``cells``), ``p_value`` and
        ``fdr`` (Benjamini-Hochberg over all genes of this test).

    Notes
    -----
    For gene :math:`g`, the two-sided Mann-Whitney U test (Wilcoxon rank-sum) uses the normal
    approximation with tie correction and continuity correction,

    .. math::

        z = \frac{\max(U_1, U_2) - n_1 n_2 / 2 - 1/2}
                 {\sqrt{\frac{n_1 n_2}{12}\left(n + 1 - \frac{\sum_t (t^3 - t)}{n (n - 1)}\right)}},
        \qquad p = \min(1, 2\,\Phi(-z)),

    with :math:`t` the sizes of groups of tied values and :math:`n = n_1 + n_2`
    (``scipy.stats.mannwhitneyu(method="asymptotic")``; a gene constant over both groups gets
    :math:`p = 1`). The fold change compares geometric means in count space,

    .. math::

        \log_2 \mathrm{FC}_g = \log_2 \frac{\exp(\bar{x}^{\mathrm{cells}}_g) - 1}
                                          {\exp(\bar{x}^{\mathrm{control}}_g) - 1},

    :math:`\pm\infty` when only one side is all zero and 0 when both are (cell-eval pins pdex's
    pseudocount ``epsilon`` to 0). pdex computes the means in the precision of its input
    (float32 for most ``.h5ad`` files); here they are float64.
    """
    import pandas as pd
    from scipy.stats import false_discovery_control, mannwhitneyu

    x = _as_dense_2d(cells, "cells")
    ref = _as_dense_2d(control, "control")
    _check_same_n_features(cells=x, control=ref)
    for name, arr in (("cells", x), ("control", ref)):
        if arr.shape[0] == 0:
            raise ValueError(f"`{name}` has no cells; a rank-sum test needs at least one cell on each side.")
        if (arr < 0).any():
            raise ValueError(
                f"`{name}` has negative values; pass log-normalised expression (e.g. cf.metrics.log_normalize(counts))."
            )
    index = pd.RangeIndex(x.shape[1]) if genes is None else pd.Index(np.asarray(genes).astype(str))
    if len(index) != x.shape[1]:
        raise ValueError(f"`genes` has {len(index)} names but the matrices have {x.shape[1]} genes.")
    test = mannwhitneyu(x, ref, axis=0, method="asymptotic", use_continuity=True, alternative="two-sided")
    # Newer scipy returns NaN (0 / 0) for a gene constant over both groups: no evidence, p = 1.
    p_value = np.nan_to_num(np.clip(np.asarray(test.pvalue, dtype=np.float64), 0.0, 1.0), nan=1.0)
    target_mean, ref_mean = np.expm1(x.mean(axis=0)), np.expm1(ref.mean(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        log2_fold_change = np.log2(target_mean / ref_mean)
    log2_fold_change[np.isnan(log2_fold_change)] = 0.0  # 0 / 0: a gene silent in both groups did not change
    return pd.DataFrame(
        {
            "target_mean": target_mean,
            "ref_mean": ref_mean,
            "log2_fold_change": log2_fold_change,
            "statistic": np.asarray(test.statistic, dtype=np.float64),
            "p_value": p_value,
            "fdr": false_discovery_control(p_value),
        },
        index=index,
    )


def _checked_tables(pred_de: pd.DataFrame, true_de: pd.DataFrame) -> None:
    import pandas as pd

    for name, table in (("pred_de", pred_de), ("true_de", true_de)):
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"`{name}` must be a DataFrame of cf.metrics.differential_expression, got {type(table)}.")
        missing = [c for c in _DE_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"`{name}` lacks the column(s) {missing}; pass the result of differential_expression.")
    if not pred_de.index.equals(true_de.index):
        raise ValueError("`pred_de` and `true_de` must cover the same genes in the same order (their indexes differ).")


def _significant_ranked(table: pd.DataFrame, fdr_threshold: float) -> np.ndarray:
    """Positions of the significant genes, largest |log2 fold change| first, ties in gene order.

    cell-eval stores the FDR and the fold change as float32 before it filters and ranks
    (polars' ordinal rank, which keeps ties in their order of appearance), so they are
    compared in float32 here too.
    """
    significant = np.flatnonzero(table["fdr"].to_numpy(dtype=np.float32) < np.float32(fdr_threshold))
    magnitude = np.abs(table["log2_fold_change"].to_numpy(dtype=np.float32)[significant])
    return significant[np.argsort(-magnitude, kind="stable")]


def _overlap(first: np.ndarray, second: np.ndarray, k: int | None, size: int) -> float:
    """|first[:k] ∩ second[:k]| / k with cell-eval's k: ``size`` (capped at ``k`` when given); 0 when it is 0."""
    k_eff = size if not k else min(k, size)
    if k_eff == 0:
        return 0.0
    return np.intersect1d(first[:k_eff], second[:k_eff]).size / k_eff


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation (average ranks; infinities rank at the ends); NaN below 2 values or without spread."""
    from scipy.stats import rankdata

    if a.size < 2:
        return float("nan")
    ra, rb = rankdata(a) - (a.size + 1) / 2, rankdata(b) - (b.size + 1) / 2
    denominator = np.sqrt((ra @ ra) * (rb @ rb))
    return float(ra @ rb / denominator) if denominator > 0 else float("nan")


def _average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """``sklearn.metrics.average_precision_score``: sum over thresholds of (R_k - R_{k-1}) P_k."""
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(scores)), labels.size - 1]
    true_positives = np.cumsum(labels)[last_of_threshold]
    precision = true_positives / (last_of_threshold + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids, as sklearn): P(score_pos > score_neg) + P(=) / 2."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos = labels.sum()
    n_neg = labels.size - n_pos
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def de_scores(
    pred_de: pd.DataFrame, true_de: pd.DataFrame, *, fdr_threshold: float = 0.05, k: int | None = None
) -> dict[str, float]:
    r"""How well a prediction recovers the true differentially expressed genes: cell-eval's DE metrics.

    Parameters
    ----------
    pred_de
        :func:`differential_expression` of the predicted cells against their control cells.
    true_de
        :func:`differential_expression` of the real cells against the real control cells,
        over the same genes in the same order.
    fdr_threshold
        A gene is differentially expressed when its FDR is below this (strictly).
    k
        Compare only the top ``k`` genes (cell-eval's ``overlap_at_50``, ``..._100``, ...);
        ``None``: all of them (``overlap_at_N``).

    Returns
    -------
    dict
        With :math:`T` the true and :math:`P` the predicted DE genes (FDR below the threshold),
        each ranked by :math:`|\log_2 \mathrm{FC}|` (largest first, ties in gene order),
        :math:`N = |T|` and :math:`M = |P|` (each capped at ``k`` when given), and
        :math:`X[:n]` the first :math:`n` of a ranking:

        - ``overlap_at_N`` (``overlap_at_{k}``): :math:`|T[:N] \cap P[:N]| / N`, the
          Virtual Cell Challenge's differential expression score; 0 when :math:`N = 0`.
        - ``precision_at_N`` (``precision_at_{k}``): :math:`|T[:M] \cap P[:M]| / M`; 0 when
          :math:`M = 0`.
        - ``de_sig_genes_recall``: :math:`|T \cap P| / |T|`.
        - ``de_direction_match``: share of :math:`T` whose fold change has the same sign in
          the prediction.
        - ``de_spearman_lfc_sig``: Spearman correlation of the true and predicted fold changes
          over :math:`T`.
        - ``pr_auc``, ``roc_auc``: average precision and ROC AUC of :math:`-\log_{10}` of the
          predicted FDR (clipped to :math:`[10^{-10}, 1]`) as a score for membership of
          :math:`T`, over all genes; NaN when every gene or no gene is in :math:`T`.
        - ``de_nsig_counts_real``, ``de_nsig_counts_pred``: :math:`|T|` and :math:`|P|`.

        The three before ``pr_auc`` are NaN when :math:`T` is empty.

    Notes
    -----
    These are ``cell_eval.metrics`` ``de_overlap_metric``, ``DESigGenesRecall``,
    ``DEDirectionMatch``, ``DESpearmanLFC``, ``compute_pr_auc``, ``compute_roc_auc`` and
    ``DENsigCounts`` for one perturbation. :math:`N` is the number of true DE genes of the
    perturbation (not a fixed number), and the predicted set is cut to the same size, so a
    prediction that calls many genes is not rewarded for it. Note that ``precision_at_N``
    cuts the *true* ranking to :math:`M`, as cell-eval does, so it is not
    :math:`|T \cap P| / |P|`. A perturbation without true DE genes scores
    ``overlap_at_N = 0`` (as in cell-eval), however good the prediction.
    """
    _checked_tables(pred_de, true_de)
    if not 0 < fdr_threshold <= 1:
        raise ValueError(f"`fdr_threshold` must be in (0, 1], got {fdr_threshold!r}.")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1):
        raise ValueError(f"`k` must be a positive integer or None, got {k!r}.")
    true_ranked = _significant_ranked(true_de, fdr_threshold)
    pred_ranked = _significant_ranked(pred_de, fdr_threshold)
    suffix = "N" if not k else str(k)
    scores = {
        f"overlap_at_{suffix}": _overlap(true_ranked, pred_ranked, k, true_ranked.size),
        f"precision_at_{suffix}": _overlap(true_ranked, pred_ranked, k, pred_ranked.size),
    }
    true_lfc = true_de["log2_fold_change"].to_numpy(dtype=np.float32)
    pred_lfc = pred_de["log2_fold_change"].to_numpy(dtype=np.float32)
    if true_ranked.size:
        scores["de_sig_genes_recall"] = np.intersect1d(true_ranked, pred_ranked).size / true_ranked.size
        scores["de_direction_match"] = float(np.mean(np.sign(true_lfc[true_ranked]) == np.sign(pred_lfc[true_ranked])))
        scores["de_spearman_lfc_sig"] = _spearman(
            true_lfc[true_ranked].astype(np.float64), pred_lfc[true_ranked].astype(np.float64)
        )
    else:
        scores |= dict.fromkeys(("de_sig_genes_recall", "de_direction_match", "de_spearman_lfc_sig"), float("nan"))
    labels = true_de["fdr"].to_numpy(dtype=np.float32) < np.float32(fdr_threshold)
    if 0 < labels.sum() < labels.size:
        pred_fdr = np.clip(pred_de["fdr"].to_numpy(dtype=np.float32), np.float32(1e-10), np.float32(1.0))
        score = -np.log10(pred_fdr)
        scores["pr_auc"], scores["roc_auc"] = _average_precision(labels, score), _roc_auc(labels, score)
    else:
        scores["pr_auc"] = scores["roc_auc"] = float("nan")
    scores["de_nsig_counts_real"] = float(true_ranked.size)
    scores["de_nsig_counts_pred"] = float(pred_ranked.size)
    return scores


def differential_expression_score(
    pred, truth, control, *, pred_control=None, fdr_threshold: float = 0.05, k: int | None = None
) -> float:
    r"""The Virtual Cell Challenge's differential expression score of one perturbation (cell-eval ``overlap_at_N``).

    Parameters
    ----------
    pred
        Predicted cells x genes, log-normalised (numpy or scipy.sparse).
    truth
        Real perturbed cells x genes, log-normalised, same genes in the same order.
    control
        Real control cells x genes, log-normalised: the reference of the true test.
    pred_control
        Control cells of the prediction, the reference of the predicted test (cell-eval tests
        the predicted cells against the control cells of the predicted AnnData); default
        ``control``, as when the real control cells are submitted with the prediction.
    fdr_threshold
        A gene is differentially expressed when its FDR is below this.
    k
        Compare the top ``k`` genes only (``overlap_at_{k}``); ``None``: all true DE genes.

    Returns
    -------
    float
        :math:`|T[:N] \cap P[:N]| / N` in [0, 1] (see :func:`de_scores`): the share of the
        :math:`N` true DE genes (Wilcoxon rank-sum, Benjamini-Hochberg FDR below the
        threshold) found among the :math:`N` predicted DE genes of largest
        :math:`|\log_2 \mathrm{FC}|`; 0 when no gene is truly DE.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> control = np.log1p(rng.poisson(5.0, (60, 30)))
    >>> truth = np.log1p(rng.poisson(np.r_[[20.0] * 5, [5.0] * 25], (60, 30)))
    >>> differential_expression_score(truth, truth, control)  # a perfect prediction
    1.0
    """
    true_de = differential_expression(truth, control)
    pred_de = differential_expression(pred, control if pred_control is None else pred_control)
    return de_scores(pred_de, true_de, fdr_threshold=fdr_threshold, k=k)[f"overlap_at_{'N' if not k else k}"]
