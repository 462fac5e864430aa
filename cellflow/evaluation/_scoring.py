"""Score predicted cells of one condition against the real cells, with the metrics of cf.metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import metrics


class ConditionScorer:
    """Scores predictions in log-normalised expression and on principal components of real data.

    Parameters
    ----------
    real
        All real cells (log-normalised, cells x genes) on which the principal components are
        fitted, so a prediction never shapes the axes it is judged on.
    n_comps
        Number of principal components for the distribution distances.
    top_k
        Number of most-changed genes (by the real mean change from control) for the top-k metrics.
    gene_names
        Names of the genes (columns of ``real``), so that :meth:`discrimination` leaves out
        a perturbation's target gene as the Virtual Cell Challenge does; without names no
        gene is left out.
    """

    def __init__(
        self, real: np.ndarray, *, n_comps: int = 50, top_k: int = 20, gene_names: Sequence[str] | None = None
    ) -> None:
        from sklearn.decomposition import PCA

        self.top_k = top_k
        self.pca = PCA(n_components=min(n_comps, real.shape[0] - 1, real.shape[1]), random_state=0).fit(real)
        if gene_names is not None and len(gene_names) != real.shape[1]:
            raise ValueError(f"`gene_names` has {len(gene_names)} names but `real` has {real.shape[1]} genes.")
        self.gene_names = None if gene_names is None else np.asarray(gene_names).astype(str)

    def score(self, pred: np.ndarray, truth: np.ndarray, control: np.ndarray) -> dict[str, float]:
        """Metrics of ``pred`` (cells x genes) against ``truth``, with ``control`` as the reference state.

        Returns
        -------
        ``energy_distance`` (PCs; scPerturb's, with squared distances: twice the squared
        distance of the means), ``energy_distance_unsquared`` and ``mmd`` (PCs; distances between
        the distributions, which see spread and shape: :func:`cellflow.metrics.energy_distance_unsquared`,
        :func:`cellflow.metrics.mmd_rbf`), ``pearson_delta`` (all genes), ``pearson_delta_top{k}``,
        ``mse_top{k}`` (mean expression on the top-k genes), ``r2`` (mean expression, all
        genes), and two of the Virtual Cell Challenge: ``mae`` (mean expression, all genes) and
        ``overlap_at_N`` (its differential expression score,
        :func:`cellflow.metrics.differential_expression_score`, with ``control`` as the
        reference of both the real and the predicted cells; NaN when a matrix has negative
        values, i.e. is not log-normalised expression).
        """
        k = self.top_k
        pred_pcs, truth_pcs = self.pca.transform(pred), self.pca.transform(truth)
        return {
            "energy_distance": metrics.energy_distance(pred_pcs, truth_pcs),
            "energy_distance_unsquared": metrics.energy_distance_unsquared(pred_pcs, truth_pcs),
            "mmd": metrics.mmd_rbf(pred_pcs, truth_pcs),
            "pearson_delta": metrics.pearson_delta(pred, truth, control),
            f"pearson_delta_top{k}": metrics.pearson_delta(pred, truth, control, top_k=k),
            f"mse_top{k}": metrics.mse_mean(pred, truth, genes=metrics.top_de_genes(truth, control, k)),
            "r2": metrics.r2_mean(pred, truth),
            "mae": metrics.mae_mean(pred, truth),
            "overlap_at_N": (
                metrics.differential_expression_score(pred, truth, control)
                if all(np.min(x) >= 0 for x in (pred, truth, control))
                else float("nan")
            ),
        }

    def discrimination(
        self, conditions: Sequence[str], pred_changes: np.ndarray, true_changes: np.ndarray
    ) -> np.ndarray:
        """The Virtual Cell Challenge's perturbation discrimination score of every condition.

        Parameters
        ----------
        conditions
            Labels of the conditions compared with each other (the held-out conditions of one
            context); a gene named like a condition is left out of its distances.
        pred_changes, true_changes
            Conditions x genes: predicted and real mean change from the control cells.

        Returns
        -------
        numpy.ndarray
            cell-eval's ``discrimination_score_l1`` per condition: :math:`1 - r / n` with
            :math:`r` the number of real changes closer (L1) to the prediction than the
            condition's own, among the :math:`n` conditions (see
            :func:`cellflow.metrics.discrimination_score`, ``convention="cell_eval"``).
        """
        labels = np.asarray(conditions).astype(str)
        exclude = None
        if self.gene_names is not None:
            exclude = self.gene_names[None, :] == labels[:, None]
        return metrics.discrimination_score(
            pred_changes, true_changes, metric="l1", exclude=exclude, convention="cell_eval"
        )

    def halves(self, truth: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Real cells in two random halves: the first predicts the second in the noise floor."""
        order = np.random.default_rng(seed).permutation(truth.shape[0])
        half = truth.shape[0] // 2
        return truth[order[:half]], truth[order[half:]]

    def noise_floor(self, truth: np.ndarray, control: np.ndarray, seed: int = 0) -> dict[str, float]:
        """Half of the real cells predicting the other half: the best score this sample size allows."""
        first, second = self.halves(truth, seed)
        return self.score(first, second, control)
