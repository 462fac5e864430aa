"""Evaluation metrics for predicted perturbation responses, on numpy arrays and scipy.sparse matrices."""

from ._de import de_scores, differential_expression, differential_expression_score
from ._distances import energy_distance, energy_distance_unsquared, mmd_rbf, wasserstein
from ._expression import mae_mean, mse_mean, pearson_delta, r2_mean, top_de_genes
from ._normalize import log_normalize, pca_project
from ._ranking import discrimination_score, top_de_overlap
from ._vcc import VCC_METRICS, vcc_score

__all__ = [
    "VCC_METRICS",
    "de_scores",
    "differential_expression",
    "differential_expression_score",
    "discrimination_score",
    "energy_distance",
    "energy_distance_unsquared",
    "log_normalize",
    "mae_mean",
    "mmd_rbf",
    "mse_mean",
    "pca_project",
    "pearson_delta",
    "r2_mean",
    "top_de_genes",
    "top_de_overlap",
    "vcc_score",
    "wasserstein",
]
