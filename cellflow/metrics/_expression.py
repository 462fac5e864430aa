"""Metrics on mean expression profiles: Pearson correlation of deltas, R², MSE, MAE, top DE genes."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def _mean_profile(x, name: str) -> np.ndarray:
    """Per-gene mean (float64) of a cells x genes matrix; a 1-D vector is taken as an already computed mean."""
    if sparse.issparse(x):
        if x.shape[0] == 0:
            raise ValueError(f"`{name}` has no cells.")
        return np.asarray(x.mean(axis=0, dtype=np.float64)).ravel()
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"`{name}` must hold numbers, got dtype {arr.dtype}.")
    if arr.ndim == 2:
        if arr.shape[0] == 0:
            raise ValueError(f"`{name}` has no cells.")
        arr = arr.mean(axis=0, dtype=np.float64)
    elif arr.ndim != 1:
        raise ValueError(f"`{name}` must be a cells x genes matrix or a 1-D mean vector, got shape {arr.shape}.")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"`{name}` contains NaN or infinite values; remove or impute them first.")
    return arr


def _mean_profiles(**inputs) -> list[np.ndarray]:
    """Mean profiles of several inputs, checked to cover the same number of genes."""
    means = {name: _mean_profile(x, name) for name, x in inputs.items()}
    if len({m.size for m in means.values()}) > 1:
        listed = ", ".join(f"`{name}` has {m.size}" for name, m in means.items())
        raise ValueError(
            f"The inputs must have the same number of genes: {listed}. "
            "Pass matrices over the same genes, in the same order."
        )
    return list(means.values())


def _gene_index(genes, n_genes: int) -> np.ndarray:
    """Integer positions from ``genes`` (integer positions or a boolean mask); all genes when None."""
    if genes is None:
        return np.arange(n_genes)
    index = np.asarray(genes)
    if index.ndim != 1:
        raise ValueError(f"`genes` must be 1-D (integer positions or a boolean mask), got shape {index.shape}.")
    if index.dtype == bool:
        if index.size != n_genes:
            raise ValueError(f"The boolean mask `genes` has {index.size} entries but the inputs have {n_genes} genes.")
        return np.flatnonzero(index)
    if not np.issubdtype(index.dtype, np.integer):
        raise TypeError(
            f"`genes` must be integer positions or a boolean mask, got dtype {index.dtype}; "
            "map gene names to positions with e.g. `adata.var_names.get_indexer(names)`."
        )
    if index.size and (index.min() < -n_genes or index.max() >= n_genes):
        raise ValueError(f"`genes` has positions out of range for {n_genes} genes.")
    return index


def _top_k_by_abs(delta: np.ndarray, k: int) -> np.ndarray:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= delta.size:
        raise ValueError(f"`k`/`top_k` must be an integer between 1 and the number of genes ({delta.size}), got {k!r}.")
    # Stable sort: among equal |delta| the lower gene position comes first, so results are reproducible.
    return np.argsort(-np.abs(delta), kind="stable")[:k]


def top_de_genes(truth, control, k: int) -> np.ndarray:
    r"""Positions of the ``k`` genes whose mean expression changes most (in absolute value) from control to truth.

    Parameters
    ----------
    truth
        Perturbed cells x genes (numpy or scipy.sparse, log-normalised), or their 1-D mean profile.
    control
        Control cells x genes, or their 1-D mean profile.
    k
        Number of genes to return.

    Returns
    -------
    numpy.ndarray
        Integer gene positions, largest :math:`|\Delta_g|` first (ties: lower position first).

    Notes
    -----
    .. math:: \Delta_g = \bar{x}^{\mathrm{truth}}_g - \bar{x}^{\mathrm{control}}_g

    where :math:`\bar{x}_g` is the mean over cells. The genes returned are the ``k`` largest
    :math:`|\Delta_g|`. This is a fold-change ranking; for a test-statistic ranking see
    :func:`cellflow.metrics.top_de_overlap`.
    """
    truth_mean, control_mean = _mean_profiles(truth=truth, control=control)
    return _top_k_by_abs(truth_mean - control_mean, k)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def pearson_delta(pred, truth, control, *, top_k: int | None = None, genes=None) -> float:
    r"""Pearson correlation between the predicted and the true change of mean expression from control.

    Parameters
    ----------
    pred
        Predicted cells x genes (numpy or scipy.sparse, log-normalised), or their 1-D mean profile.
    truth
        Real perturbed cells x genes, or their mean profile.
    control
        Control cells x genes, or their mean profile (the same cells for ``pred`` and ``truth``).
    top_k
        Only use the ``top_k`` genes with the largest true change :math:`|\Delta^{\mathrm{truth}}_g|`
        (see :func:`top_de_genes`). Exclusive with ``genes``.
    genes
        Only use these genes: integer positions or a boolean mask. Exclusive with ``top_k``.

    Returns
    -------
    float
        Correlation in [-1, 1]; NaN when either delta vector is constant over the selected genes.

    Notes
    -----
    With :math:`\bar{x}_g` the per-gene mean over cells,

    .. math::

        \Delta^{\mathrm{pred}}_g = \bar{x}^{\mathrm{pred}}_g - \bar{x}^{\mathrm{control}}_g, \qquad
        \Delta^{\mathrm{truth}}_g = \bar{x}^{\mathrm{truth}}_g - \bar{x}^{\mathrm{control}}_g

    .. math::

        r = \frac{\sum_g (\Delta^{\mathrm{pred}}_g - \overline{\Delta^{\mathrm{pred}}})
                         (\Delta^{\mathrm{truth}}_g - \overline{\Delta^{\mathrm{truth}}})}
                 {\sqrt{\sum_g (\Delta^{\mathrm{pred}}_g - \overline{\Delta^{\mathrm{pred}}})^2}
                  \sqrt{\sum_g (\Delta^{\mathrm{truth}}_g - \overline{\Delta^{\mathrm{truth}}})^2}}

    over the selected genes ("Pearson delta" of GEARS and later benchmarks; with ``top_k=20``
    it is their "Pearson delta on the top-20 DE genes").
    """
    pred_mean, truth_mean, control_mean = _mean_profiles(pred=pred, truth=truth, control=control)
    delta_truth = truth_mean - control_mean
    if top_k is not None and genes is not None:
        raise ValueError("Pass either `top_k` or `genes`, not both.")
    index = _top_k_by_abs(delta_truth, top_k) if top_k is not None else _gene_index(genes, delta_truth.size)
    if index.size < 2:
        raise ValueError(f"A Pearson correlation needs at least 2 genes, got {index.size}.")
    return _pearson(pred_mean[index] - control_mean[index], delta_truth[index])


def r2_mean(pred, truth, *, genes=None) -> float:
    r"""Coefficient of determination (R²) of the predicted mean expression profile, with the truth as reference.

    Parameters
    ----------
    pred
        Predicted cells x genes (numpy or scipy.sparse, log-normalised), or their 1-D mean profile.
    truth
        Real cells x genes, or their mean profile.
    genes
        Only use these genes: integer positions or a boolean mask (e.g. ``top_de_genes(truth, control, 20)``).

    Returns
    -------
    float
        R² (1 is perfect; can be negative). When the true profile is constant over the genes, 1.0
        for a perfect prediction and 0.0 otherwise (as ``sklearn.metrics.r2_score``).

    Notes
    -----
    With :math:`y_g = \bar{x}^{\mathrm{truth}}_g` and :math:`\hat{y}_g = \bar{x}^{\mathrm{pred}}_g`
    (per-gene means over cells),

    .. math:: R^2 = 1 - \frac{\sum_g (y_g - \hat{y}_g)^2}{\sum_g (y_g - \bar{y})^2}

    the same as ``sklearn.metrics.r2_score(y, y_hat)``. It is not symmetric: the truth defines
    the denominator.
    """
    pred_mean, truth_mean = _mean_profiles(pred=pred, truth=truth)
    index = _gene_index(genes, truth_mean.size)
    if index.size < 2:
        raise ValueError(f"R² needs at least 2 genes, got {index.size}.")
    y, y_hat = truth_mean[index], pred_mean[index]
    residual = np.sum((y - y_hat) ** 2)
    total = np.sum((y - y.mean()) ** 2)
    if total == 0:
        return 1.0 if residual == 0 else 0.0
    return float(1.0 - residual / total)


def mse_mean(pred, truth, *, genes=None) -> float:
    r"""Mean squared error between the predicted and the true mean expression profiles.

    Parameters
    ----------
    pred
        Predicted cells x genes (numpy or scipy.sparse, log-normalised), or their 1-D mean profile.
    truth
        Real cells x genes, or their mean profile.
    genes
        Only use these genes: integer positions or a boolean mask.

    Returns
    -------
    float
        The mean squared error (0 is perfect).

    Notes
    -----
    .. math:: \mathrm{MSE} = \frac{1}{G} \sum_{g=1}^{G} (\bar{x}^{\mathrm{pred}}_g - \bar{x}^{\mathrm{truth}}_g)^2

    over the :math:`G` selected genes, with :math:`\bar{x}_g` the per-gene mean over cells.
    """
    pred_mean, truth_mean = _mean_profiles(pred=pred, truth=truth)
    index = _gene_index(genes, truth_mean.size)
    if index.size == 0:
        raise ValueError("`genes` selects no genes.")
    return float(np.mean((pred_mean[index] - truth_mean[index]) ** 2))


def mae_mean(pred, truth, *, genes=None) -> float:
    r"""Mean absolute error between the predicted and the true mean expression profiles.

    Parameters
    ----------
    pred
        Predicted cells x genes (numpy or scipy.sparse, log-normalised), or their 1-D mean profile.
    truth
        Real cells x genes, or their mean profile.
    genes
        Only use these genes: integer positions or a boolean mask.

    Returns
    -------
    float
        The mean absolute error (0 is perfect).

    Notes
    -----
    .. math:: \mathrm{MAE} = \frac{1}{G} \sum_{g=1}^{G} |\bar{x}^{\mathrm{pred}}_g - \bar{x}^{\mathrm{truth}}_g|

    over the :math:`G` selected genes, with :math:`\bar{x}_g` the per-gene mean over cells.
    """
    pred_mean, truth_mean = _mean_profiles(pred=pred, truth=truth)
    index = _gene_index(genes, truth_mean.size)
    if index.size == 0:
        raise ValueError("`genes` selects no genes.")
    return float(np.mean(np.abs(pred_mean[index] - truth_mean[index])))
