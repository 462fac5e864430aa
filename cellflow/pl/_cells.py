"""The cells a plot of one condition compares: generated, real and control cells of one context, log-normalised."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._constants import UNS_KEY
from ..metrics import log_normalize
from ..pp import SetupConfig, get_setup, parse_condition

if TYPE_CHECKING:
    from anndata import AnnData


@dataclass
class ConditionCells:
    """Expression (cells x genes, log-normalised) of one condition in one context.

    Attributes
    ----------
    condition
        The condition's canonical label (``"B+A"`` is ``"A+B"``).
    context
        Covariate (and time) values shared by the generated cells, which selected the real and
        control cells.
    genes
        Gene names, in the order of ``real``'s genes.
    generated, real, control
        Generated cells of the condition, real cells of the condition and control cells.
    """

    condition: str
    context: dict[str, object]
    genes: list[str]
    generated: np.ndarray
    real: np.ndarray
    control: np.ndarray

    @property
    def title(self) -> str:
        """The condition and its context, for a plot's title."""
        if not self.context:
            return self.condition
        values = (f"{v:g}" if isinstance(v, float) else str(v) for v in self.context.values())
        return f"{self.condition} ({', '.join(values)})"


def condition_cells(pred: AnnData, real: AnnData, condition: str, control: AnnData | None = None) -> ConditionCells:
    """Select and log-normalise the generated, real and control cells of ``condition``.

    The context (covariate values and time point) comes from the generated cells of the
    condition, which :func:`cellflow.tl.generate` produces for one context; real and control
    cells are taken from that context. Genes are matched by name (``pred`` and ``control``
    are put in ``real``'s order). Counts (``cf.pp.setup(..., counts=True)``, the default) are
    log-normalised as scanpy's ``normalize_total(target_sum=1e4)`` and ``log1p``; other
    data are used as they are. The inputs are not modified.

    Parameters
    ----------
    pred
        Generated cells (:func:`cellflow.tl.generate`), counts in ``X``.
    real
        Real cells, set up with :func:`cellflow.pp.setup`.
    condition
        Perturbation label, e.g. ``"A+B"`` (order within a combination does not matter).
    control
        Control cells; ``None`` takes the control cells of ``real``.
    """
    _check_anndata(pred, "pred")
    _check_anndata(real, "real")
    setup = _setup(real)
    label = _canonical(condition, setup)
    generated = _labels(pred, setup, "pred") == label
    if not generated.any():
        known = sorted(set(_labels(pred, setup, "pred")))
        raise ValueError(f"pred has no cells of condition {label!r}; it holds {_listing(known)}.")
    context = _context(pred, generated, setup)
    in_context = _in_context(real, context, "real")
    real_labels = _labels(real, setup, "real")
    observed = (real_labels == label) & in_context
    if not observed.any():
        where = "" if not context else f" in context {context}"
        hint = (
            "" if (real_labels == label).any() else " (a condition never measured cannot be compared with real cells)"
        )
        raise ValueError(f"real has no cells of condition {label!r}{where}{hint}.")
    if control is None:
        control, control_mask, control_layer = real, (real_labels == setup.control) & in_context, setup.layer
    else:
        _check_anndata(control, "control")
        control_mask = _in_context(control, context, "control")
        if setup.perturbation_key in control.obs.columns:
            control_mask &= _labels(control, setup, "control") == setup.control
        control_layer = _setup(control).layer if UNS_KEY in control.uns else setup.layer
        if control_layer is not None and control_layer not in control.layers:
            control_layer = None  # control cells given with their counts in X
    if not control_mask.any():
        where = "" if not context else f" in context {context}"
        raise ValueError(
            f"control has no control cells ({setup.control!r}){where}; pass control cells of that context."
        )
    genes = list(map(str, real.var_names))
    return ConditionCells(
        condition=label,
        context=context,
        genes=genes,
        generated=_expression(pred, generated, genes, None, setup.counts, "pred"),
        real=_expression(real, observed, genes, setup.layer, setup.counts, "real"),
        control=_expression(control, control_mask, genes, control_layer, setup.counts, "control"),
    )


def _check_anndata(adata, name: str) -> None:
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        raise TypeError(f"{name} must be an AnnData, got {type(adata).__name__}.")
    if adata.n_obs == 0:
        raise ValueError(f"{name} has no cells.")


def _setup(real: AnnData) -> SetupConfig:
    try:
        return get_setup(real)
    except KeyError:
        raise ValueError(
            "real is not set up: run cf.pp.setup(real, perturbation_key=..., control=..., covariate_keys=[...]) "
            "as for training, so that its conditions and contexts can be read."
        ) from None


def _canonical(condition, setup: SetupConfig) -> str:
    if not isinstance(condition, str):
        raise TypeError(f"condition must be a perturbation label such as 'A' or 'A+B', got {condition!r}.")
    parsed = parse_condition(condition, control=setup.control, sep=setup.combo_sep)
    if parsed.is_control:
        raise ValueError(
            f"condition={condition!r} is the control; choose a perturbation (control cells are drawn too)."
        )
    return parsed.label(setup.control, setup.combo_sep)


def _labels(adata: AnnData, setup: SetupConfig, name: str) -> np.ndarray:
    """Canonical label of every cell (each distinct label parsed once)."""
    key = setup.perturbation_key
    if key not in adata.obs.columns:
        raise ValueError(f"{name}.obs has no column {key!r} (the perturbation_key of real's setup).")
    codes, uniques = pd.factorize(adata.obs[key].astype(str))
    canonical = []
    for value in uniques:
        try:
            canonical.append(
                parse_condition(value, control=setup.control, sep=setup.combo_sep).label(setup.control, setup.combo_sep)
            )
        except ValueError as err:
            raise ValueError(f"{name}.obs[{key!r}]: {err}") from None
    return np.asarray(canonical, dtype=object)[codes]


def _context(pred: AnnData, cells: np.ndarray, setup: SetupConfig) -> dict[str, object]:
    """The one context (covariates, time) of the generated cells of the condition."""
    context: dict[str, object] = {}
    keys = [*setup.covariate_keys, *([setup.time_key] if setup.time_key else [])]
    for key in keys:
        if key not in pred.obs.columns:
            raise ValueError(
                f"pred.obs has no column {key!r}, which real's setup uses to tell contexts apart; pass the AnnData "
                "that cf.tl.generate returned."
            )
        column = pred.obs[key][cells]
        values = column.astype(float) if key == setup.time_key else column.astype(str)
        distinct = sorted(set(values))
        if len(distinct) > 1:
            raise ValueError(
                f"pred holds this condition in several contexts ({key}: {distinct[:5]}); plot one at a time, "
                f"e.g. pred[pred.obs[{key!r}] == {distinct[0]!r}]."
            )
        context[key] = distinct[0]
    return context


def _in_context(adata: AnnData, context: dict[str, object], name: str) -> np.ndarray:
    mask = np.ones(adata.n_obs, dtype=bool)
    for key, value in context.items():
        if key not in adata.obs.columns:
            raise ValueError(f"{name}.obs has no column {key!r}, which the generated cells' context ({context}) uses.")
        column = adata.obs[key]
        if isinstance(value, float):
            mask &= pd.to_numeric(column, errors="coerce").to_numpy(dtype=float) == value
        else:
            mask &= column.astype(str).to_numpy() == value
    return mask


def _expression(adata: AnnData, cells: np.ndarray, genes: list[str], layer, counts: bool, name: str) -> np.ndarray:
    """Dense expression of ``cells`` over ``genes`` (in that order), log-normalised when they are counts."""
    names = list(map(str, adata.var_names))
    if names != genes:
        missing = [g for g in genes if g not in set(names)]
        extra = [g for g in names if g not in set(genes)]
        if missing or extra or len(names) != len(genes):
            raise ValueError(
                f"{name} and real must have the same genes: {name} lacks {len(missing)} of real's genes "
                f"({missing[:5]}) and has {len(extra)} others ({extra[:5]}). Subset both to the model's genes."
            )
    matrix = adata.X if layer is None else adata.layers[layer]
    matrix = matrix[np.flatnonzero(cells)]
    if names != genes:
        position = {g: i for i, g in enumerate(names)}
        matrix = matrix[:, [position[g] for g in genes]]
    if counts:
        try:
            return log_normalize(matrix)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, dtype=np.float64)


def _listing(values: list[str], limit: int = 10) -> str:
    shown = ", ".join(map(repr, values[:limit]))
    return f"{shown}{', ...' if len(values) > limit else ''} ({len(values)} conditions)"
