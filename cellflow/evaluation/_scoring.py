"""Score predicted cells of one condition against the real cells, with the metrics of cf.metrics."""

from __future__ import annotations

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
    """

    def __init__(self, real: np.ndarray, *, n_comps: int = 50, top_k: int = 20) -> None:
        from sklearn.decomposition import PCA

        self.top_k = top_k
        self.pca = PCA(n_components=min(n_comps, real.shape[0] - 1, real.shape[1]), random_state=0).fit(real)

    def score(self, pred: np.ndarray, truth: np.ndarray, control: np.ndarray) -> dict[str, float]:
        """Metrics of ``pred`` (cells x genes) against ``truth``, with ``control`` as the reference state.

        Returns
        -------
        ``energy_distance`` (PCs), ``pearson_delta`` (all genes), ``pearson_delta_top{k}``,
        ``mse_top{k}`` (mean expression on the top-k genes) and ``r2`` (mean expression, all genes).
        """
        k = self.top_k
        pred_pcs, truth_pcs = self.pca.transform(pred), self.pca.transform(truth)
        return {
            "energy_distance": metrics.energy_distance(pred_pcs, truth_pcs),
            "pearson_delta": metrics.pearson_delta(pred, truth, control),
            f"pearson_delta_top{k}": metrics.pearson_delta(pred, truth, control, top_k=k),
            f"mse_top{k}": metrics.mse_mean(pred, truth, genes=metrics.top_de_genes(truth, control, k)),
            "r2": metrics.r2_mean(pred, truth),
        }

    def noise_floor(self, truth: np.ndarray, control: np.ndarray, seed: int = 0) -> dict[str, float]:
        """Half of the real cells predicting the other half: the best score this sample size allows."""
        order = np.random.default_rng(seed).permutation(truth.shape[0])
        half = truth.shape[0] // 2
        return self.score(truth[order[:half]], truth[order[half:]], control)
