"""Checks of expression values (counts or normalised), chunk by chunk so that no matrix is copied whole."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

MAX_COUNT = 1e9
"""Largest value :func:`setup` (and :func:`cellflow.tl.encode`) accept in one entry of count data.

Real UMI counts of one gene in one cell stay below about 1e6; anything above 1e9 is corrupted or
mis-scaled data, and it breaks the samplers downstream (library sizes built from such entries
overflow numpy's Poisson sampler when counts are generated). Counts up to 1e9 also keep every
library size below 1e14 for any realistic number of genes.
"""
INTEGER_SAMPLE = 100_000
"""Nonzero values :func:`check_expression` checks for integer-ness when asked for a sample (cheap on any size)."""


def check_expression(
    matrix,
    *,
    counts: bool,
    where: str,
    columns: np.ndarray | None = None,
    integer_sample: int | None = None,
    model: bool = False,
) -> bool:
    """Check expression values chunk by chunk, so dense and backed data never get copied whole.

    Parameters
    ----------
    matrix
        Cells x genes (dense, sparse or backed).
    counts
        Raw counts are expected: negative, non-integer and values above :data:`MAX_COUNT` are refused.
    where
        How the user names the matrix (``"adata.X"``, ``"adata.layers['counts']"``), for the errors.
    columns
        Positions of the columns to check (default: all).
    integer_sample
        Check integer-ness on about this many nonzero values (spread over the rows) instead of all
        of them, so the check stays cheap on large data.
    model
        The data are to be encoded by a trained model (:func:`cellflow.tl.encode`), not set up: only the
        wording of the errors changes.

    Returns
    -------
    Whether any checked value is nonzero.
    """
    if matrix is None:
        raise ValueError(f"{where} is empty (None); put the expression matrix there.")
    dtype = np.dtype(getattr(matrix, "dtype", np.float64))
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise TypeError(
            f"{where} has dtype {dtype}; expression must be integer or floating-point numbers. "
            f"Convert it first, e.g. {where} = {where}.astype('float32')."
        )
    floating = np.issubdtype(dtype, np.floating)
    before = "encoding" if model else "setup"
    expected = "the model was set up with raw counts (counts=True)" if model else "counts=True expects raw counts"
    other = "" if model else ", or counts=False with likelihood='normal' for normalised data"
    n_rows, n_cols = matrix.shape
    step = max(1, 2_000_000 // max(1, n_cols))
    rng = np.random.default_rng(0)
    nonzero = False
    for start in range(0, n_rows, step):
        chunk = matrix[start : start + step]
        if columns is not None:
            chunk = chunk[:, columns]
        values = chunk.data if sp.issparse(chunk) else np.asarray(chunk)
        if not values.size:
            continue
        if floating and not np.all(np.isfinite(values)):
            raise ValueError(f"{where} contains NaN or infinite values; remove or impute them before {before}.")
        if counts and values.min() < 0:
            raise ValueError(
                f"{where} contains negative values but {expected}. Pass the raw counts (e.g. layer='counts'){other}."
            )
        if counts and (high := values.max()) > MAX_COUNT:
            raise ValueError(
                f"{where} holds a count of {high:.10g}, above the largest cellflow accepts ({MAX_COUNT:.0e} "
                "per entry); no real count is this large. Check the data (corrupted or mis-scaled values)."
            )
        if counts and floating:
            sample = values
            if integer_sample is not None:
                sample = values[values != 0]
                quota = -(-integer_sample * chunk.shape[0] // n_rows)  # this chunk's share, rounded up
                if sample.size > quota:
                    sample = sample[rng.integers(0, sample.size, quota)]
            fractional = sample[sample != np.round(sample)]
            if fractional.size:
                raise ValueError(
                    f"{where} holds non-integer values (e.g. {fractional[0]:.4g}) but {expected}. Pass the raw "
                    f"counts (e.g. layer='counts'){other}."
                )
        nonzero = nonzero or bool(np.any(values != 0))
    return nonzero
