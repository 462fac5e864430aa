"""The Virtual Cell Challenge's combined score: each metric scaled against a baseline, clipped, averaged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

#: The metrics of the challenge (cell-eval's ``vcc`` profile): differential expression score,
#: perturbation discrimination score, mean absolute error of pseudobulk expression.
VCC_METRICS = ("overlap_at_N", "discrimination_score_l1", "mae")

#: Best value (0 or 1) of cell-eval's metrics, which decides how each is scaled
#: (``cell_eval.metrics_registry``'s ``best_value``).
BEST_VALUES = {
    "mae": 0.0,
    "mse": 0.0,
    "mae_delta": 0.0,
    "mse_delta": 0.0,
    "pearson_delta": 1.0,
    "pearson_edistance": 1.0,
    "clustering_agreement": 1.0,
    "discrimination_score_l1": 1.0,
    "discrimination_score_l2": 1.0,
    "discrimination_score_cosine": 1.0,
    "de_spearman_sig": 1.0,
    "de_spearman_lfc_sig": 1.0,
    "de_direction_match": 1.0,
    "de_sig_genes_recall": 1.0,
    "pr_auc": 1.0,
    "roc_auc": 1.0,
    **{f"{kind}_at_{k}": 1.0 for kind in ("overlap", "precision") for k in ("N", 50, 100, 200, 500)},
}


def vcc_score(
    scores: Mapping[str, float],
    baseline: Mapping[str, float],
    *,
    metrics: Sequence[str] = VCC_METRICS,
    best: Mapping[str, float] | None = None,
) -> pd.Series:
    r"""Scores relative to a baseline, as the Virtual Cell Challenge combines them (``cell_eval.score_agg_metrics``).

    Parameters
    ----------
    scores
        Each metric's mean over the perturbations, for the method scored (e.g. a row of
        cell-eval's ``agg_results.csv`` at ``statistic == "mean"``, or a pandas Series).
    baseline
        The same means for the baseline; the challenge uses the cell-mean baseline (every
        perturbation predicted as the mean expression of the training perturbations).
    metrics
        Metrics to combine (default: the challenge's three, :data:`VCC_METRICS`).
    best
        Best value (0 or 1) of metrics not in :data:`BEST_VALUES`, by name.

    Returns
    -------
    pandas.Series
        The scaled score of every metric, then ``avg_score``: their mean, the challenge's score.

    Notes
    -----
    With :math:`s` the method's and :math:`b` the baseline's mean of a metric,

    .. math::

        \tilde{s} = \begin{cases}
            1 - s / b & \text{best value 0 (errors, e.g. MAE)} \\
            (s - b) / (1 - b) & \text{best value 1 (e.g. DES, PDS)}
        \end{cases}

    then :math:`\tilde{s}` is set to 0 where it is NaN (e.g. :math:`0/0`) and clipped below at 0
    (not above): a method worse than the baseline on a metric scores 0 on it, a perfect one 1.
    ``avg_score`` is the mean of the clipped values. A baseline at the best value itself
    divides by zero, which counts as 0 as well (NaN or :math:`-\infty`).
    """
    import pandas as pd

    known = {**BEST_VALUES, **dict(best or {})}
    names = list(metrics)
    if not names:
        raise ValueError("`metrics` is empty; name at least one metric to combine.")
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ValueError(f"No best value known for {unknown}; pass best={{name: 0.0 or 1.0}}.")
    if any(known[m] not in (0.0, 1.0) for m in names):
        raise ValueError("Best values must be 0.0 or 1.0.")
    for name, table in (("scores", scores), ("baseline", baseline)):
        missing = [m for m in names if m not in table]
        if missing:
            raise KeyError(f"`{name}` has no value for {missing}.")
    user = np.array([float(scores[m]) for m in names])
    base = np.array([float(baseline[m]) for m in names])
    best_one = np.array([known[m] == 1.0 for m in names])
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(best_one, (user - base) / (1.0 - base), 1.0 - user / base)
    scaled = np.clip(np.nan_to_num(scaled, nan=0.0, posinf=np.inf, neginf=0.0), 0.0, None)
    return pd.Series([*scaled, scaled.mean()], index=[*names, "avg_score"], name="from_baseline")
