"""The simulator's cells, block by block: the same cells whether they are kept in memory or written in chunks.

Cells are drawn in fixed blocks of :data:`BLOCK_CELLS` from one random stream, in the order
the simulator has always drawn them (a seed gives the screen of earlier releases): every
library size first, then the programs' loadings and the genes' dispersions, then each
block's program scores, gamma rates and Poisson counts. The library sizes are replayed block
by block from a copy of the stream instead of being held for every cell, so memory is bounded
by a block (plus 4 bytes per cell for its condition), and how the cells are later grouped for
writing cannot change them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pandas as pd
from scipy import sparse

BLOCK_CELLS = 4096  # cells drawn at once: memory ~ BLOCK_CELLS x n_genes floats
_NB_THETA = (7.0, 0.5)  # NB inverse dispersion per gene: lognormal median, log-sd


def count_blocks(
    rng: np.random.Generator,
    true_mean: np.ndarray,
    condition_of_cell: np.ndarray,
    library_size: tuple[float, float],
    n_programs: int,
    program_scale: float,
) -> Iterator[sparse.csr_matrix]:
    """CSR counts of consecutive blocks of :data:`BLOCK_CELLS` cells.

    Negative binomial counts around ``library * true_mean * programs`` (the program factor has
    mean one), with lognormal library sizes ``median * exp(log_sd * N(0, 1))``. ``rng`` is
    advanced past the library sizes at once; the counts are drawn as the blocks are asked for.
    """
    n_cells, n_genes = len(condition_of_cell), true_mean.shape[1]
    median, log_sd = library_size
    library_rng = copy.deepcopy(rng)  # replays the library sizes, block by block
    for start in range(0, n_cells, BLOCK_CELLS):
        rng.standard_normal(min(BLOCK_CELLS, n_cells - start))
    # Shared programs (cycling, stress, ...) each touch ~30% of genes: correlated cell-to-cell variation.
    loadings = rng.normal(0.0, program_scale, size=(n_programs, n_genes)) * (rng.random((n_programs, n_genes)) < 0.3)
    loadings = loadings.astype(np.float32)
    half_variance = 0.5 * (loadings**2).sum(axis=0)  # lognormal mean correction: E[exp(z - var / 2)] = 1
    theta_median, theta_spread = _NB_THETA
    theta = rng.lognormal(np.log(theta_median), theta_spread, size=n_genes).astype(np.float32)
    proportions = true_mean.astype(np.float32)
    return _blocks(rng, library_rng, proportions, condition_of_cell, median, log_sd, loadings, half_variance, theta)


def _blocks(rng, library_rng, proportions, condition_of_cell, median, log_sd, loadings, half_variance, theta):
    n_cells, n_genes = len(condition_of_cell), proportions.shape[1]
    for start in range(0, n_cells, BLOCK_CELLS):
        conditions = condition_of_cell[start : start + BLOCK_CELLS]
        n = len(conditions)
        library = median * np.exp(log_sd * library_rng.standard_normal(n))
        mean = proportions[conditions] * library[:, None].astype(np.float32)
        mean *= np.exp(rng.standard_normal((n, len(loadings)), dtype=np.float32) @ loadings - half_variance)
        rate = rng.standard_gamma(theta, size=(n, n_genes), dtype=np.float32)  # gamma-Poisson = NB
        rate *= mean / theta
        counts = rng.poisson(rate)
        # Build CSR directly: scipy's dense -> sparse conversion is several times slower.
        flat = np.flatnonzero(counts)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.count_nonzero(counts, axis=1), out=indptr[1:])
        yield sparse.csr_matrix(
            (counts.ravel()[flat].astype(np.float32), (flat % n_genes).astype(np.int32), indptr), shape=(n, n_genes)
        )


def cell_obs(conditions: pd.DataFrame, condition_of_cell: np.ndarray, start: int, n_total: int) -> pd.DataFrame:
    """``obs`` of the cells ``start, start + 1, ...`` of a screen of ``n_total`` cells.

    ``conditions`` holds one row per condition with its final (categorical) dtypes, so every
    block has the same categories; cells are named ``cell_<i>``, zero-padded to ``n_total``.
    """
    obs = conditions.iloc[condition_of_cell].reset_index(drop=True)
    width = len(str(n_total - 1))
    obs.index = [f"cell_{i:0{width}d}" for i in range(start, start + len(condition_of_cell))]
    return obs
