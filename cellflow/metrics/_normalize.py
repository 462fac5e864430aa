"""Prepare expression matrices for the metrics: input checks, log-normalisation, PCA fitted on real data."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def _as_dense_2d(x, name: str) -> np.ndarray:
    """``x`` (array-like or scipy.sparse, rows x features) as a finite float64 2-D numpy array."""
    if sparse.issparse(x):
        x = x.toarray()
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.bool_)):
        raise TypeError(f"`{name}` must hold numbers, got dtype {x.dtype}.")
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D matrix (rows x features), got shape {x.shape}.")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"`{name}` contains NaN or infinite values; remove or impute them first.")
    return x


def _check_same_n_features(**arrays: np.ndarray) -> None:
    """Raise a ValueError naming the arrays whose last dimension (genes / features) differs."""
    sizes = {name: arr.shape[-1] for name, arr in arrays.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"`{name}` has {size}" for name, size in sizes.items())
        raise ValueError(
            f"The inputs must have the same number of genes/features: {listed}. "
            "Pass matrices over the same genes, in the same order."
        )


def log_normalize(counts, target_sum: float | None = 1e4) -> np.ndarray:
    r"""Scale each cell to ``target_sum`` total counts, then take ``log1p``, like scanpy.

    The same as ``sc.pp.normalize_total(adata, target_sum=target_sum)`` followed by
    ``sc.pp.log1p(adata)``, on a plain matrix.

    Parameters
    ----------
    counts
        Non-negative counts, cells x genes (numpy array or scipy.sparse matrix).
    target_sum
        Total count of every cell after scaling. ``None`` uses the median total count of the
        cells with a non-zero total (scanpy's default).

    Returns
    -------
    numpy.ndarray
        Dense log-normalised matrix, cells x genes; float32 for float32 input, else float64.
        Cells with zero counts stay zero.

    Notes
    -----
    For cell :math:`i` with counts :math:`c_{ig}` and total :math:`s_i = \sum_g c_{ig}`:

    .. math:: x_{ig} = \log\left(1 + \frac{T \, c_{ig}}{s_i}\right)

    with :math:`T` = ``target_sum`` (:math:`s_i = 0` is treated as 1, so empty cells stay zero).

    Examples
    --------
    >>> import numpy as np
    >>> log_normalize(np.array([[1.0, 3.0]]), target_sum=4.0)  # [log(1 + 1), log(1 + 3)]
    array([[0.69314718, 1.38629436]])
    """
    dtype = np.result_type(counts.dtype if hasattr(counts, "dtype") else np.float64, np.float32)
    x = _as_dense_2d(counts, "counts").astype(dtype, copy=False)
    if (x < 0).any():
        raise ValueError("`counts` has negative values; log_normalize expects raw (non-negative) counts.")
    totals = x.sum(axis=1, keepdims=True)
    if target_sum is None:
        nonzero = totals[totals > 0]
        target_sum = float(np.median(nonzero)) if nonzero.size else 1.0
    elif not target_sum > 0:
        raise ValueError(f"`target_sum` must be positive (or None for the median total), got {target_sum!r}.")
    scale = target_sum / np.where(totals > 0, totals, 1.0)
    return np.log1p(x * scale.astype(dtype))


def pca_project(reference, *others, n_comps: int = 50) -> tuple[np.ndarray, ...]:
    r"""Fit a PCA on the real (reference) cells and project the reference and the other sets onto it.

    Distribution distances between predicted and real cells are then computed in a space
    defined by the real data only, so a prediction cannot shape the axes it is judged on.

    Parameters
    ----------
    reference
        Real cells x genes (numpy or scipy.sparse), typically log-normalised expression.
    *others
        Further cells x genes matrices over the same genes (e.g. predicted cells, control cells).
    n_comps
        Number of principal components, clipped to ``min(n_reference_cells - 1, n_genes)``
        (the rank a centred reference matrix can have).

    Returns
    -------
    tuple of numpy.ndarray
        ``(reference_pcs, *other_pcs)``, each cells x components (always a tuple, also with no ``others``).

    Notes
    -----
    With :math:`\mu` the mean of the reference cells and :math:`V_k` (genes x k) the top-k right
    singular vectors of the centred reference matrix, every set :math:`X` is projected as

    .. math:: Z = (X - \mu) \, V_k

    i.e. all sets are centred with the *reference* mean. Uses :class:`sklearn.decomposition.PCA`
    (``random_state=0``, so the randomized solver chosen for large inputs is deterministic).
    """
    from sklearn.decomposition import PCA

    ref = _as_dense_2d(reference, "reference")
    projected = [_as_dense_2d(other, f"others[{i}]") for i, other in enumerate(others)]
    _check_same_n_features(reference=ref, **{f"others[{i}]": arr for i, arr in enumerate(projected)})
    if int(n_comps) < 1:
        raise ValueError(f"`n_comps` must be at least 1, got {n_comps!r}.")
    max_comps = min(ref.shape[0] - 1, ref.shape[1])
    if max_comps < 1:
        raise ValueError(f"`reference` needs at least 2 cells to fit a PCA, got {ref.shape[0]}.")
    pca = PCA(n_components=min(int(n_comps), max_comps), random_state=0)
    return (pca.fit_transform(ref), *(pca.transform(arr) for arr in projected))
