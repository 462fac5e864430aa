"""Checks and parsing of the arguments of :func:`~cellflow.tl.generate` and :func:`~cellflow.tl.predict`.

Both verbs take a trained model, condition labels with doses, covariates, time points, a solver
and a guidance weight; every one is checked here before any cell is drawn, with an error that
says what to pass instead.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .._constants import SOLVER_METHODS
from ..models._cellflow import CellFlow
from ..pp._conditions import parse_condition


def _check_model(model) -> None:
    if not isinstance(model, CellFlow):
        raise TypeError(f"model must be a trained cf.CellFlow, got {type(model).__name__}.")
    model._require_trained()


def _check_int(name: str, value) -> None:
    """An int (a numpy integer is fine); bools and floats are refused, even 2.0."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")


def _check_solver(method: str | None, steps: int | None) -> None:
    """``method`` and ``steps`` as given (``None``: the model's default solver)."""
    if method is not None and method not in SOLVER_METHODS:
        raise ValueError(f"method={method!r} is not a solver; choose one of {', '.join(SOLVER_METHODS)}.")
    if steps is not None:
        _check_int("steps", steps)
        if steps < 1:
            raise ValueError(f"steps={steps} must be at least 1.")


def _check_conditions(conditions) -> list[str]:
    if isinstance(conditions, str):
        conditions = [conditions]
    elif not isinstance(conditions, Iterable) or isinstance(conditions, Mapping):
        raise TypeError(f"conditions must be a list of perturbation labels, got {type(conditions).__name__}.")
    conditions = list(conditions)
    if not conditions:
        raise ValueError("conditions is empty; give at least one perturbation label.")
    for i, c in enumerate(conditions):
        if not isinstance(c, str):
            raise TypeError(f"conditions[{i}]={c!r} is not a perturbation label; give strings such as 'A' or 'A+B'.")
    return conditions


def _parse(model: CellFlow, conditions: list[str], doses) -> list:
    """Parse the labels (and doses) of the request; an error names the argument at fault."""
    setup, codec = model.setup, model.codec
    if doses is not None:
        if isinstance(doses, str):
            raise TypeError(
                f"doses={doses!r} is a string; pass a list with one dose (or dose string such as '1+0.5') per "
                f"condition, e.g. doses=[{doses!r}]."
            )
        if not isinstance(doses, Sequence | np.ndarray | pd.Series):
            raise TypeError(f"doses must be a list with one dose per condition, got {type(doses).__name__}.")
        doses = list(doses)
        if len(doses) != len(conditions):
            raise ValueError(
                f"doses has {len(doses)} entries for {len(conditions)} conditions; give one per condition."
            )
        for i, d in enumerate(doses):
            if isinstance(d, bool | np.bool_) or not isinstance(d, str | numbers.Real):
                raise TypeError(f"doses[{i}]={d!r} must be a number or a dose string such as '1+0.5'.")
    parsed = []
    for i, label in enumerate(conditions):
        try:
            cond = parse_condition(label, control=setup.control, sep=setup.combo_sep)
        except ValueError as err:
            raise ValueError(f"conditions[{i}]: {err}") from None
        if doses is not None:
            try:
                cond = parse_condition(label, control=setup.control, sep=setup.combo_sep, dose=doses[i])
            except ValueError as err:
                raise ValueError(f"doses[{i}]: {err}") from None
        parsed.append(cond)
    try:
        codec.check_tokens(parsed)
    except ValueError as err:
        raise ValueError(f"conditions: {err}") from None
    if doses is not None and setup.dose_key is None:
        other = [d for c in parsed for d in c.doses if d != 1.0]
        if other:
            raise ValueError(
                f"doses={doses!r}: the model was set up without a dose_key, so it knows dose 1 only (got "
                f"{other[0]:g}). Leave doses out, or set up the data with cf.pp.setup(..., dose_key=...) and retrain."
            )
    low, high = model.dose_range
    outside = sorted({d for c in parsed for d in c.doses if d != 0 and not low <= d <= high})
    if outside:
        warnings.warn(
            f"doses {[f'{d:g}' for d in outside]} lie outside the doses of the training data [{low:g}, {high:g}]: "
            "the prediction extrapolates beyond anything the model has seen.",
            UserWarning,
            stacklevel=3,
        )
    return parsed


def _check_finite(z1: torch.Tensor, label: str, method: str, steps: int) -> None:
    """Raise before decoding if the flow produced NaN or infinite latents (the count sampler would fail obscurely)."""
    if not torch.isfinite(z1).all():
        raise ValueError(
            f"The flow produced non-finite latents for {label!r} (method={method!r}, steps={steps}). "
            "Try a smaller step (more steps, or method='heun'/'dopri5') or guidance closer to 1; "
            "if it persists, the model's weights are damaged: retrain it."
        )


def _check_guidance(model: CellFlow, guidance: float) -> None:
    if isinstance(guidance, bool | np.bool_) or not isinstance(guidance, numbers.Real):
        raise TypeError(f"guidance must be a number (1 = no guidance), got {guidance!r}.")
    if not np.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance={guidance} must be a finite number >= 0 (1 = no guidance).")
    if guidance != 1.0 and not model.module.sampling.null_condition:
        raise ValueError(
            f"guidance={guidance} needs a null condition, but this model was trained with condition_dropout=0. "
            "Train with e.g. model.train(condition_dropout=0.1), or use guidance=1."
        )


def _time_points(model: CellFlow, times: Sequence[float] | None) -> list[float]:
    if model.setup.time_key is None:
        if times is not None:
            raise ValueError("times was given, but the model was trained without a time_key; leave times out.")
        return [0.0]
    if times is None:
        raise ValueError(f"The model was trained on time courses ({model.setup.time_key!r}); pass times=[...].")
    values = [times] if np.isscalar(times) else times
    try:
        times = [float(t) for t in values]
    except (TypeError, ValueError):
        raise TypeError(f"times={values!r} must be numbers (time points such as [24, 48]).") from None
    if not times:
        raise ValueError("times is empty; give at least one time point.")
    if model.module.over_time:
        known = model.time_points
        unknown = [t for t in times if t not in known]
        if unknown:
            raise ValueError(
                f"times {[f'{t:g}' for t in unknown]} are not training time points; backbone="
                f"{model.config.backbone!r} predicts whole trajectories through the training time points "
                f"{[f'{t:g}' for t in known]} only: choose among them."
            )
    return times


def _context(model: CellFlow, covariates: Mapping[str, str] | None) -> tuple[str, ...]:
    keys, categories = model.codec.covariate_keys, model.codec.covariate_categories
    if covariates is not None and not isinstance(covariates, Mapping):
        raise TypeError(
            f"covariates must be a mapping such as {{'cell_type': 'K562'}}, got {type(covariates).__name__}."
        )
    covariates = {key: str(value) for key, value in (covariates or {}).items()}
    unknown = sorted(map(str, set(covariates) - set(keys)))
    if unknown:
        raise ValueError(f"Unknown covariate(s) {unknown} in covariates; the model was trained with covariates {keys}.")
    for key, value in covariates.items():
        if value not in categories[key]:
            raise ValueError(
                f"covariates[{key!r}]={value!r} was not seen in training; known values: {categories[key][:20]}."
            )
    contexts = model.module.reference.contexts
    if len(covariates) < len(keys):
        if len(contexts) != 1:
            missing = [k for k in keys if k not in covariates]
            options = {k: categories[k][:10] for k in missing}
            raise ValueError(f"covariates must give {missing} (the model has several contexts): choose from {options}.")
        covariates = dict(zip(keys, contexts[0])) | covariates  # the one context fills what is not given
    values = tuple(covariates[k] for k in keys)
    if values not in contexts:
        known = [dict(zip(keys, c)) for c in contexts[:10]]
        raise ValueError(
            f"covariates={covariates} has no control cells in the training data (the source of generated "
            f"cells); contexts with control cells: {known}{' ...' if len(contexts) > 10 else ''}."
        )
    return values
