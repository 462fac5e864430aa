"""A starting point for the VAE's gene dispersions: the method of moments on the training counts."""

from __future__ import annotations

import numpy as np

from ._disk import BLOCK_ROWS, read_rows

MIN_LOG_THETA = -5.0
"""Lowest starting ``log theta`` (strongest overdispersion) a gene gets."""
MAX_LOG_THETA = 10.0
"""Highest starting ``log theta``: the Poisson limit, for genes without excess variance (or without counts)."""


def initial_log_theta(matrix, *, chunk_rows: int = BLOCK_ROWS) -> np.ndarray:
    r"""Per-gene ``log theta`` of a negative binomial with library-size offsets, by the method of moments.

    scvi-tools starts each gene's inverse dispersion at :math:`\log\theta \sim N(0, 1)` and Adam
    moves it by about the learning rate per step, so reaching the near-Poisson dispersion of
    sparse Perturb-seq genes (:math:`\log\theta` of 5 to 10) takes thousands of steps; until
    then counts are sampled overdispersed, which biases every log-normalised mean. Starting from
    this estimate lets a short training reach the fit a long one reaches.

    Parameters
    ----------
    matrix
        Counts, cells x genes: numpy, scipy sparse, or a backed AnnData's ``X`` (read in chunks
        of ``chunk_rows`` rows, in one pass, as the VAE's training reads it).
    chunk_rows
        Rows read at once.

    Returns
    -------
    numpy.ndarray
        ``(genes,)`` float32 values in ``[MIN_LOG_THETA, MAX_LOG_THETA]``.

    Notes
    -----
    With library sizes :math:`l_c = \sum_g x_{cg}` and gene shares :math:`p_g = \sum_c x_{cg} / \sum_c l_c`,
    the mean of cell :math:`c` is :math:`\mu_{cg} = l_c p_g` and a negative binomial has
    :math:`\mathrm{Var}\,x_{cg} = \mu_{cg} + \mu_{cg}^2 / \theta_g`, so

    .. math:: \hat\theta_g = \frac{\sum_c \mu_{cg}^2}{\sum_c \left[(x_{cg} - \mu_{cg})^2 - \mu_{cg}\right]},

    computed from per-gene sums of :math:`x^2`, :math:`x\,l` and :math:`x` and the sums of
    :math:`l` and :math:`l^2`. A gene with no variance beyond Poisson (or no counts) gets the
    Poisson limit ``MAX_LOG_THETA``. Differences between perturbations count as excess variance,
    so the estimate leans overdispersed; training refines it.
    """
    n_cells, n_genes = matrix.shape
    sum_x, sum_x2, sum_xl = np.zeros(n_genes), np.zeros(n_genes), np.zeros(n_genes)
    sum_l = sum_l2 = 0.0
    for start in range(0, n_cells, chunk_rows):
        x = read_rows(matrix, start, min(n_cells, start + chunk_rows)).astype(np.float64)
        library = x.sum(axis=1)
        sum_x += x.sum(axis=0)
        sum_x2 += (x * x).sum(axis=0)
        sum_xl += library @ x
        sum_l += library.sum()
        sum_l2 += float(library @ library)
    log_theta = np.full(n_genes, MAX_LOG_THETA)
    if sum_l <= 0:
        return log_theta.astype(np.float32)
    share = sum_x / sum_l
    squared_means = share**2 * sum_l2
    excess = sum_x2 - 2.0 * share * sum_xl + squared_means - share * sum_l
    over = (excess > 0) & (squared_means > 0)
    with np.errstate(divide="ignore"):
        log_theta[over] = np.log(squared_means[over] / excess[over])
    return np.clip(log_theta, MIN_LOG_THETA, MAX_LOG_THETA).astype(np.float32)
