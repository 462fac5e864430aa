"""Rank-based metrics: can a prediction be told apart from other conditions, do its top DE genes match."""

from __future__ import annotations

import numpy as np

from ._normalize import _as_dense_2d, _check_same_n_features

_SCIPY_METRICS = {"l1": "cityblock", "l2": "euclidean", "cosine": "cosine"}
_CONVENTIONS = ("cellflow", "cell_eval")


def discrimination_score(
    pred_deltas, true_deltas, *, metric: str = "l1", exclude=None, convention: str = "cellflow"
) -> np.ndarray:
    r"""Rank of each condition's true profile among all true profiles, by distance to its prediction.

    Parameters
    ----------
    pred_deltas
        Conditions x genes: predicted profiles, usually mean(pred) - mean(control) per condition
        (numpy or scipy.sparse). Row ``i`` is the prediction for condition ``i``.
    true_deltas
        Conditions x genes: the true profiles, same shape and row order; at least 2 conditions.
    metric
        Distance between profiles: ``"l1"`` (sum of absolute differences), ``"l2"`` (Euclidean)
        or ``"cosine"`` (1 - cosine similarity; profiles must not be all zero, except with
        ``convention="cell_eval"``, where an all-zero profile is at distance 1 from every
        other, as in scikit-learn).
    exclude
        Boolean conditions x genes: ``exclude[i, g]`` leaves gene ``g`` out of every distance
        to prediction ``i``. The Virtual Cell Challenge leaves out each perturbation's target
        gene, whose knock-down would otherwise give the perturbation away:
        ``exclude = np.asarray(gene_names)[None, :] == np.asarray(conditions)[:, None]``.
    convention
        ``"cellflow"``: the rank divided by :math:`n - 1`, ties counted as half; 0 is best,
        0.5 the expectation of a random prediction. ``"cell_eval"``: cell-eval's
        ``discrimination_score_l1`` (``_l2``, ``_cosine``), :math:`1 - \mathrm{rank} / n`; 1 is
        best, :math:`1/n` worst.

    Returns
    -------
    numpy.ndarray
        One score per condition.

    Notes
    -----
    With :math:`d_{ij} = d(\hat{\delta}_i, \delta_j)` the distance between prediction :math:`i`
    and true profile :math:`j` (over the genes not excluded for :math:`i`), over :math:`n`
    conditions, the ``"cellflow"`` score is

    .. math::

        s_i = \frac{\#\{j \neq i : d_{ij} < d_{ii}\} + \tfrac{1}{2} \#\{j \neq i : d_{ij} = d_{ii}\}}{n - 1}

    i.e. the rank of the true condition among all true conditions (0-based, ties counted as
    half) divided by :math:`n - 1`. Ties counted as half keep the expected score of a
    prediction that carries no information at exactly 0.5.

    The ``"cell_eval"`` score is :math:`1 - r_i / n` with :math:`r_i` the position of
    :math:`i` in ``numpy.argsort`` of :math:`(d_{i1}, \dots, d_{in})`: without ties
    :math:`r_i = \#\{j : d_{ij} < d_{ii}\}`, so it is :math:`1 - s_i (n - 1) / n`; tied
    distances are ordered by ``numpy.argsort``, as in cell-eval. In cell-eval the conditions
    are the perturbations sorted by name and the profiles are pseudobulk deltas (mean
    log-normalised expression minus that of the control cells, the prediction's own control
    cells for the prediction).
    """
    from scipy.spatial.distance import cdist

    pred = _as_dense_2d(pred_deltas, "pred_deltas")
    truth = _as_dense_2d(true_deltas, "true_deltas")
    _check_same_n_features(pred_deltas=pred, true_deltas=truth)
    if pred.shape[0] != truth.shape[0]:
        raise ValueError(
            f"`pred_deltas` has {pred.shape[0]} conditions (rows) but `true_deltas` has {truth.shape[0]}; "
            "row i of both must be the same condition."
        )
    n_conditions = pred.shape[0]
    if n_conditions < 2:
        raise ValueError(f"A discrimination score needs at least 2 conditions, got {n_conditions}.")
    if metric not in _SCIPY_METRICS:
        raise ValueError(f"`metric` must be one of {sorted(_SCIPY_METRICS)}, got {metric!r}.")
    if convention not in _CONVENTIONS:
        raise ValueError(f"`convention` must be one of {_CONVENTIONS}, got {convention!r}.")
    keep = np.ones(pred.shape, dtype=bool)
    if exclude is not None:
        mask = np.asarray(exclude)
        if mask.dtype != bool or mask.shape != pred.shape:
            raise ValueError(
                f"`exclude` must be a boolean conditions x genes mask of shape {pred.shape}, "
                f"got dtype {mask.dtype} and shape {mask.shape}."
            )
        keep = ~mask
        if not keep.any(axis=1).all():
            raise ValueError("`exclude` leaves out every gene of some condition; keep at least one gene per condition.")
    distances = np.empty((n_conditions, n_conditions))
    for i in range(n_conditions):  # prediction i against every true profile, on the genes kept for i
        pred_i, truth_i = pred[i : i + 1, keep[i]], truth[:, keep[i]]
        if metric == "cosine" and convention == "cell_eval":
            distances[i] = _sklearn_cosine(pred_i, truth_i)[0]
            continue
        if metric == "cosine":
            for name, arr in (("pred_deltas", pred_i), ("true_deltas", truth_i)):
                if np.any(np.linalg.norm(arr, axis=1) == 0):
                    raise ValueError(f"`{name}` has an all-zero row, for which the cosine distance is undefined.")
        distances[i] = cdist(pred_i, truth_i, metric=_SCIPY_METRICS[metric])[0]
    if convention == "cell_eval":
        ranks = np.array([np.flatnonzero(np.argsort(distances[i]) == i)[0] for i in range(n_conditions)])
        return 1.0 - ranks / n_conditions
    own = np.diag(distances)[:, None]
    closer = np.sum(distances < own, axis=1)
    ties = np.sum(distances == own, axis=1) - 1  # the condition itself always ties
    return (closer + 0.5 * ties) / (n_conditions - 1)


def _sklearn_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sklearn.metrics.pairwise.cosine_distances``: an all-zero row is at distance 1 from everything."""
    norm_a, norm_b = np.linalg.norm(a, axis=1, keepdims=True), np.linalg.norm(b, axis=1, keepdims=True)
    a, b = a / np.where(norm_a == 0, 1.0, norm_a), b / np.where(norm_b == 0, 1.0, norm_b)
    return np.clip(1.0 - a @ b.T, 0.0, 2.0)


def _matrix_and_names(x, name: str):
    """(dense matrix, gene names or None) from an AnnData (``.X``, ``.var_names``) or a plain matrix."""
    if hasattr(x, "var_names") and hasattr(x, "X"):
        return _as_dense_2d(x.X, f"{name}.X"), np.asarray(x.var_names)
    return _as_dense_2d(x, name), None


def _ranked_genes(condition: np.ndarray, control: np.ndarray, *, n_genes: int, method: str, rankby_abs: bool):
    """Positions of the top ``n_genes`` genes of scanpy's rank_genes_groups, condition vs control."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    group = pd.Categorical(["condition"] * condition.shape[0] + ["control"] * control.shape[0])
    adata = ad.AnnData(
        np.vstack([condition, control]),
        obs=pd.DataFrame({"group": group}, index=[str(i) for i in range(len(group))]),
        var=pd.DataFrame(index=[str(g) for g in range(condition.shape[1])]),  # positions, so duplicates can't clash
    )
    adata.uns["log1p"] = {"base": None}  # the inputs are log-normalised (natural log)
    sc.tl.rank_genes_groups(
        adata,
        groupby="group",
        groups=["condition"],
        reference="control",
        method=method,
        n_genes=n_genes,
        rankby_abs=rankby_abs,
        use_raw=False,
    )
    return np.asarray(adata.uns["rank_genes_groups"]["names"]["condition"][:n_genes]).astype(int)


def top_de_overlap(
    pred, truth, control, *, n_genes: int = 20, method: str = "wilcoxon", rankby_abs: bool = True
) -> float:
    r"""Fraction of the top differentially expressed genes (condition vs control) shared by prediction and truth.

    Parameters
    ----------
    pred
        Predicted cells x genes, log-normalised (numpy, scipy.sparse or an AnnData, whose ``.X`` is used).
    truth
        Real perturbed cells x genes, log-normalised, same genes in the same order.
    control
        Real control cells x genes, log-normalised; the reference for both tests.
    n_genes
        Number of top genes compared.
    method
        Test of ``scanpy.tl.rank_genes_groups``: ``"wilcoxon"``, ``"t-test"``, ``"t-test_overestim_var"``
        or ``"logreg"``.
    rankby_abs
        Rank genes by the absolute value of the score, so down-regulated genes count too.

    Returns
    -------
    float
        :math:`|P \cap T| / N`, in [0, 1].

    Notes
    -----
    :math:`P` is the set of the :math:`N` = ``n_genes`` top genes of
    ``sc.tl.rank_genes_groups`` comparing ``pred`` cells with ``control`` cells, :math:`T` the
    same for ``truth`` cells vs ``control`` cells, and the score is

    .. math:: \mathrm{overlap} = \frac{|P \cap T|}{N}

    Genes are matched by position; when AnnData objects are given, their ``var_names`` must agree.
    """
    pred_x, pred_names = _matrix_and_names(pred, "pred")
    truth_x, truth_names = _matrix_and_names(truth, "truth")
    control_x, control_names = _matrix_and_names(control, "control")
    _check_same_n_features(pred=pred_x, truth=truth_x, control=control_x)
    given_names = [names for names in (pred_names, truth_names, control_names) if names is not None]
    if any(not np.array_equal(names, given_names[0]) for names in given_names[1:]):
        raise ValueError(
            "The AnnData inputs have different `var_names`; subset them to the same genes in the same order."
        )
    for name, arr in (("pred", pred_x), ("truth", truth_x), ("control", control_x)):
        if arr.shape[0] < 2:
            raise ValueError(f"`{name}` needs at least 2 cells for a differential expression test, got {arr.shape[0]}.")
    n_var = truth_x.shape[1]
    if isinstance(n_genes, bool) or not isinstance(n_genes, int | np.integer) or not 1 <= n_genes <= n_var:
        raise ValueError(f"`n_genes` must be an integer between 1 and the number of genes ({n_var}), got {n_genes!r}.")
    options = {"n_genes": int(n_genes), "method": method, "rankby_abs": rankby_abs}
    top_pred = _ranked_genes(pred_x, control_x, **options)
    top_truth = _ranked_genes(truth_x, control_x, **options)
    return len(set(top_pred.tolist()) & set(top_truth.tolist())) / n_genes
