"""Cell-level sampling: per-cell programs, library sizes already drawn, negative binomial counts."""

from __future__ import annotations

import numpy as np
from scipy import sparse

_CHUNK_CELLS = 4096  # cells sampled at once: bounds memory at ~chunk x n_genes floats
_NB_THETA = (7.0, 0.5)  # NB inverse dispersion per gene: lognormal median, log-sd


def sample_counts(
    rng: np.random.Generator,
    true_mean: np.ndarray,
    condition_of_cell: np.ndarray,
    library: np.ndarray,
    n_programs: int,
    program_scale: float,
) -> sparse.csr_matrix:
    """Negative binomial counts around ``library * true_mean * programs``; the program factor has mean one."""
    n_cells, n_genes = len(condition_of_cell), true_mean.shape[1]
    # Shared programs (cycling, stress, ...) each touch ~30% of genes: correlated cell-to-cell variation.
    loadings = rng.normal(0.0, program_scale, size=(n_programs, n_genes)) * (rng.random((n_programs, n_genes)) < 0.3)
    loadings = loadings.astype(np.float32)
    half_variance = 0.5 * (loadings**2).sum(axis=0)  # lognormal mean correction: E[exp(z - var / 2)] = 1
    median, spread = _NB_THETA
    theta = rng.lognormal(np.log(median), spread, size=n_genes).astype(np.float32)
    proportions = true_mean.astype(np.float32)
    data, indices, row_nnz = [], [], []
    for start in range(0, n_cells, _CHUNK_CELLS):
        rows = slice(start, start + _CHUNK_CELLS)
        n = len(condition_of_cell[rows])
        mean = proportions[condition_of_cell[rows]] * library[rows, None].astype(np.float32)
        mean *= np.exp(rng.standard_normal((n, n_programs), dtype=np.float32) @ loadings - half_variance)
        rate = rng.standard_gamma(theta, size=(n, n_genes), dtype=np.float32)  # gamma-Poisson = NB
        rate *= mean / theta
        counts = rng.poisson(rate)
        # Build CSR directly: scipy's dense -> sparse conversion is several times slower.
        flat = np.flatnonzero(counts)
        data.append(counts.ravel()[flat].astype(np.float32))
        indices.append((flat % n_genes).astype(np.int32))
        row_nnz.append(np.count_nonzero(counts, axis=1))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(row_nnz))])
    return sparse.csr_matrix((np.concatenate(data), np.concatenate(indices), indptr), shape=(n_cells, n_genes))
