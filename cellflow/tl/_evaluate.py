"""``cf.tl.evaluate``: score predicted cells against real cells, one row per condition and context."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import metrics as m
from ..pp._setup import SetupConfig, parse_obs_conditions

if TYPE_CHECKING:
    from anndata import AnnData

#: Metrics :func:`evaluate` can compute. ``*_top_k`` use the ``top_k`` genes most changed in the real cells.
EVALUATE_METRICS = (
    "pearson_delta",
    "pearson_delta_top_k",
    "r2",
    "mse",
    "mae",
    "mse_top_k",
    "energy_distance",
    "mmd",
    "wasserstein",
    "top_de_overlap",
)
DEFAULT_METRICS = ("pearson_delta", "pearson_delta_top_k", "r2", "mse", "mse_top_k", "energy_distance", "mmd")
_DISTANCES = ("energy_distance", "mmd", "wasserstein")


def evaluate(
    pred: AnnData,
    truth: AnnData,
    *,
    control: AnnData | str | None = None,
    perturbation_key: str | None = None,
    covariate_keys: Sequence[str] = (),
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_comps: int = 50,
    top_k: int = 20,
) -> pd.DataFrame:
    """Score predicted cells against real cells of the same condition and context.

    Both AnnData hold counts over the same genes; they are log-normalised inside
    (:func:`cellflow.metrics.log_normalize`). Expression metrics compare mean profiles
    (changes are taken from the real control cells of the context); distribution distances
    compare cells on principal components fitted on the real cells only (``truth`` and the
    control cells), so a prediction never shapes the axes it is judged on.

    Parameters
    ----------
    pred
        Predicted cells (e.g. from :func:`cellflow.tl.generate`), with the perturbation
        (and covariate) columns in ``obs``.
    truth
        Real cells. When ``truth.uns["cellflow"]`` exists (:func:`cellflow.pp.setup`), the
        perturbation key, control label, covariates and separator are read from it.
    control
        Control cells: an AnnData of real control cells, the control label in ``truth``,
        or ``None`` (the label from the setup, else ``"control"``).
    perturbation_key
        Column of ``obs`` with perturbation labels (needed without a setup).
    covariate_keys
        Columns of ``obs`` that define a context (without a setup).
    metrics
        Names from :data:`EVALUATE_METRICS`.
    n_comps
        Principal components for the distribution distances.
    top_k
        Genes for the ``*_top_k`` metrics and ``top_de_overlap``.

    Returns
    -------
    One row per (condition, context) present in both ``pred`` and ``truth`` (the control
    excluded): ``condition``, the covariates, ``n_pred``, ``n_truth`` and one column per metric.

    Examples
    --------
    >>> table = cf.tl.evaluate(pred, adata, metrics=["pearson_delta", "energy_distance"])  # doctest: +SKIP
    """
    unknown = [name for name in metrics if name not in EVALUATE_METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; choose from {list(EVALUATE_METRICS)}.")
    sep = "+"
    control_label = control if isinstance(control, str) else None
    if "cellflow" in truth.uns:
        setup = SetupConfig.from_uns(truth.uns["cellflow"])
        perturbation_key = perturbation_key or setup.perturbation_key
        covariate_keys = tuple(covariate_keys) or setup.covariate_keys
        control_label = control_label or setup.control
        sep = setup.combo_sep
    control_label = control_label or "control"
    if perturbation_key is None:
        raise ValueError("perturbation_key is needed: truth has no uns['cellflow']; pass perturbation_key=...")
    keys = list(covariate_keys)
    for name, data in (("pred", pred), ("truth", truth)):
        missing = [k for k in [perturbation_key, *keys] if k not in data.obs.columns]
        if missing:
            raise KeyError(f"{name}.obs lacks column(s) {missing}.")
    if list(pred.var_names) != list(truth.var_names):
        raise ValueError("pred and truth must have the same genes in the same order (pred[:, truth.var_names]).")

    def labels_and_contexts(data: AnnData) -> pd.DataFrame:
        conditions = parse_obs_conditions(data.obs, perturbation_key=perturbation_key, control=control_label, sep=sep)
        frame = pd.DataFrame({"condition": [c.label(control_label, sep) for c in conditions]})
        for key in keys:
            frame[key] = data.obs[key].astype(str).to_numpy()
        return frame

    pred_frame, truth_frame = labels_and_contexts(pred), labels_and_contexts(truth)
    pred_x, truth_x = m.log_normalize(pred.X), m.log_normalize(truth.X)
    if isinstance(control, str) or control is None:
        control_x = truth_x[truth_frame["condition"].to_numpy() == control_label]
        control_frame = truth_frame[truth_frame["condition"] == control_label].reset_index(drop=True)
    else:
        if list(control.var_names) != list(truth.var_names):
            raise ValueError("control must have the same genes as truth, in the same order.")
        control_x = m.log_normalize(control.X)
        control_frame = pd.DataFrame(
            {k: control.obs[k].astype(str).to_numpy() for k in keys if k in control.obs.columns}, index=None
        )
        control_frame = control_frame if len(control_frame.columns) else pd.DataFrame(index=range(control.n_obs))
    if len(control_x) == 0:
        raise ValueError(f"No control cells: truth has no cells labelled {control_label!r}; pass control=...")

    projector = None
    if any(name in _DISTANCES for name in metrics):
        from sklearn.decomposition import PCA

        reference = np.concatenate([truth_x[truth_frame["condition"].to_numpy() != control_label], control_x])
        comps = min(n_comps, reference.shape[0] - 1, reference.shape[1])
        projector = PCA(n_components=comps, random_state=0).fit(reference)

    rows = []
    groups = truth_frame[truth_frame["condition"] != control_label].drop_duplicates()
    for record in groups.to_dict("records"):
        in_truth = _match(truth_frame, record)
        in_pred = _match(pred_frame, record)
        if not in_pred.any():
            continue
        context = {k: record[k] for k in keys}
        in_control = _match(control_frame, {k: v for k, v in context.items() if k in control_frame.columns})
        if not in_control.any():
            raise ValueError(f"No control cells in context {context}; pass control cells of that context.")
        p, t, c = pred_x[in_pred], truth_x[in_truth], control_x[in_control]
        row = {**record, "n_pred": int(in_pred.sum()), "n_truth": int(in_truth.sum())}
        row |= _scores(p, t, c, metrics, projector, top_k)
        rows.append(row)
    columns = ["condition", *keys, "n_pred", "n_truth", *metrics]
    return pd.DataFrame(rows, columns=columns)


def _match(frame: pd.DataFrame, record: dict) -> np.ndarray:
    where = np.ones(len(frame), dtype=bool)
    for key, value in record.items():
        where &= frame[key].to_numpy() == value
    return where


def _scores(pred, truth, control, names, projector, top_k) -> dict[str, float]:
    top = m.top_de_genes(truth, control, min(top_k, truth.shape[1]))
    out = {}
    for name in names:
        if name == "pearson_delta":
            out[name] = m.pearson_delta(pred, truth, control)
        elif name == "pearson_delta_top_k":
            out[name] = m.pearson_delta(pred, truth, control, genes=top)
        elif name == "r2":
            out[name] = m.r2_mean(pred, truth)
        elif name == "mse":
            out[name] = m.mse_mean(pred, truth)
        elif name == "mae":
            out[name] = m.mae_mean(pred, truth)
        elif name == "mse_top_k":
            out[name] = m.mse_mean(pred, truth, genes=top)
        elif name == "top_de_overlap":
            out[name] = m.top_de_overlap(pred, truth, control, n_genes=top_k)
        else:
            pred_pcs, truth_pcs = projector.transform(pred), projector.transform(truth)
            distance = {"energy_distance": m.energy_distance, "mmd": m.mmd_rbf, "wasserstein": m.wasserstein}[name]
            out[name] = float(distance(pred_pcs, truth_pcs))
    return {k: float(v) for k, v in out.items()}
