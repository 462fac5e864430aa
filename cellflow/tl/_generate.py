"""``cf.tl.generate``: predicted cells of any condition, as an AnnData of counts."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._constants import LATENT_KEY, SOLVER_METHODS
from ..flow import ConditionBatch
from ..models._cellflow import CellFlow
from ..pp._conditions import parse_condition

MAX_ENTRIES = 2_000_000_000
"""Largest ``n_cells x conditions x time points x genes`` one call of :func:`generate` produces.

The decoder forms the expected counts of every generated cell (float32, so 8 GB at this limit)
before they are sampled and compressed, and a sparse matrix with more entries than 2**31 - 1
needs 64-bit indices that many downstream tools do not read. Generate larger sets in batches.
"""

if TYPE_CHECKING:
    from anndata import AnnData


def generate(
    model: CellFlow,
    *,
    conditions: Sequence[str],
    n_cells: int = 500,
    covariates: Mapping[str, str] | None = None,
    doses: Sequence[str | float] | None = None,
    times: Sequence[float] | None = None,
    seed: int = 0,
    method: str | None = None,
    steps: int | None = None,
    guidance: float = 1.0,
    sample_counts: bool = True,
) -> AnnData:
    """Generate cells of the given conditions with a trained model.

    Source cells (control cells of the context, or noise) are carried by the flow's ODE to
    the condition; the decoder turns their latents and library sizes (drawn from the
    context's control cells) into counts.

    Parameters
    ----------
    model
        A trained :class:`~cellflow.CellFlow`.
    conditions
        Perturbation labels, e.g. ``["KLF1", "KLF1+MAP2K6"]``; order within a
        combination does not matter; combinations never measured are allowed.
    n_cells
        Cells to generate per condition (and time point): an int >= 1. ``n_cells x
        len(conditions) x time points x genes`` may not exceed :data:`MAX_ENTRIES` (2e9).
    covariates
        Context of the generated cells, e.g. ``{"cell_type": "K562"}``; may be omitted when
        the training data had a single context.
    doses
        A list with one dose (or dose string aligned with the tokens, ``"1+0.5"``) per condition;
        default: every token at dose 1, the only dose a model set up without a ``dose_key`` knows.
    times
        Time points to generate (models set up with ``time_key``). A backbone that takes time
        as part of the condition (``mlp``, ``set_attention``) generates each time point
        separately, from control cells of the context. A backbone over time (``mamba``)
        carries ``n_cells`` control trajectories of the context (control cells chained by
        optimal transport across the training time points) through the flow at once and
        returns their cells at ``times``, which must be training time points.
    seed
        Seed of the source draw and of the count sampling: the same seed gives the same cells.
        An int from 0 to 2**63 - 1.
    method, steps
        ODE solver (``"euler"``, ``"heun"``, ``"rk4"`` with ``steps`` fixed steps, or
        ``"dopri5"``, adaptive). Default: ``"euler"`` with 4 steps for a reflowed model
        (what ``model.train()`` returns; ``distill_steps`` steps after distillation), else
        ``"heun"`` with 8 steps: reflow straightens the flow so that a few Euler steps land where
        an accurate solver would (the solver-quality benchmark compares them on real data).
    guidance
        Classifier-free guidance scale ``w``: the velocity is ``v(null) + w * (v(condition)
        - v(null))``. ``1`` (default) uses the condition alone; ``w > 1`` pushes further
        from the unconditional flow, ``0`` ignores the condition. Needs a model trained
        with ``condition_dropout > 0`` (the null condition is learned there).
    sample_counts
        Sample counts from the likelihood; ``False`` returns its mean (expected counts).

    Returns
    -------
    AnnData with ``X`` the generated counts (sparse, the training genes in training order),
    ``obs`` the perturbation, covariates, dose and time of every cell (and, for a backbone
    over time only, ``trajectory``: an integer shared by the cells of one predicted trajectory
    across time points; other backbones generate each time point independently, so their
    cells have no trajectory), ``obsm["X_cellflow"]`` the predicted latents, and
    ``uns["cellflow_generate"]`` recording model, solver, steps and seed.

    Raises
    ------
    TypeError
        Arguments of the wrong type (``n_cells`` and ``seed`` must be ints, not bools; ``doses``
        a list, not a string; ``covariates`` a mapping).
    ValueError
        Anything the model cannot generate, named by its argument: unknown tokens, covariate
        values or times, doses a model without ``dose_key`` does not know, a request above
        :data:`MAX_ENTRIES`, guidance without a null condition. Every check runs before any cell
        is generated.
    """
    import anndata as ad

    _check_model(model)
    module = model.module
    _check_solver(method, steps)
    method, steps = module.sampling.solver(method, steps)
    setup, codec = model.setup, model.codec
    conditions = _check_conditions(conditions)
    _check_int("n_cells", n_cells)
    if n_cells < 1:
        raise ValueError(f"n_cells={n_cells} must be at least 1.")
    _check_int("seed", seed)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed={seed} must be between 0 and 2**63 - 1.")
    if not isinstance(sample_counts, bool | np.bool_):
        raise TypeError(f"sample_counts must be True (draw counts) or False (expected counts), got {sample_counts!r}.")
    parsed = _parse(model, conditions, doses)
    _check_guidance(model, guidance)
    time_points = _time_points(model, times)
    entries = int(n_cells) * len(conditions) * len(time_points) * len(model.genes)
    if entries > MAX_ENTRIES:
        raise ValueError(
            f"n_cells={n_cells} for {len(conditions)} condition(s) x {len(time_points)} time point(s) x "
            f"{len(model.genes)} genes asks for {entries:.3g} expression values, more than one call generates "
            f"({MAX_ENTRIES:.0e}). Generate in smaller batches: fewer cells, or a few conditions per call."
        )
    n_cells, seed = int(n_cells), int(seed)
    context_values = _context(model, covariates)
    context = torch.tensor([module.reference.context_code(context_values)])
    covariate_codes = codec.encode_covariates([dict(zip(codec.covariate_keys, context_values))])

    generator = torch.Generator().manual_seed(seed)
    # A backbone over time generates whole trajectories through the training time points at once.
    over_time = module.over_time
    per_draw = [None] if over_time else time_points
    latents, counts, rows, trajectories = [], [], [], []
    nfe = 0
    for i, cond in enumerate(parsed):
        ids, dose, mask = codec.encode_conditions([cond])
        label = cond.label(setup.control, setup.combo_sep)
        dose_label = setup.combo_sep.join(f"{d:g}" for d in cond.doses) if cond.tokens else "0"
        for t in per_draw:
            time_point = torch.tensor([0.0 if t is None else t], dtype=torch.float32)
            condition = ConditionBatch(ids, dose, mask, covariate_codes, time_point, context)
            z1, log_library, batch, nfe = module.sample(
                condition, n_cells, generator, method=method, steps=steps, guidance=guidance
            )
            _check_finite(z1, label, method, steps)
            if over_time:  # (n, T, D) trajectories: decode them at each requested time point
                outputs = [(model.time_points.index(t_out), t_out) for t_out in time_points]
            else:  # (n, D) cells of time point t, as trajectories of one time point
                z1, log_library, batch = z1[:, None], log_library[:, None], batch[:, None]
                outputs = [(0, t)]
            for k, t_out in outputs:
                x = model.vae.decode(
                    z1[:, k],
                    log_library[:, k, None],
                    batch[:, k, None],
                    sample=sample_counts,
                    generator=generator,
                    sparse=True,
                )
                latents.append(z1[:, k].numpy())
                counts.append(x)
                rows.append((label, dose_label, t_out, n_cells))
                if over_time:
                    trajectories.append(i * n_cells + np.arange(n_cells))
    obs = _obs(rows, setup, codec.covariate_keys, context_values)
    if over_time:
        obs["trajectory"] = np.concatenate(trajectories).astype(np.int64)
    matrix = counts[0] if len(counts) == 1 else sp.vstack(counts, format="csr")  # vstack would copy a lone block
    out = ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=pd.Index(model.genes)))
    out.obsm[LATENT_KEY] = np.concatenate(latents).astype(np.float32)
    out.uns["cellflow_generate"] = {
        "model": repr(model),
        "backbone": model.config.backbone,
        "method": method,
        "steps": int(steps),
        "guidance": float(guidance),
        "seed": int(seed),
        "sample_counts": bool(sample_counts),
        "function_evaluations_per_condition": int(nfe),
    }
    return out


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


def _obs(rows, setup, covariate_keys, context_values) -> pd.DataFrame:
    labels = np.concatenate([[r[0]] * r[3] for r in rows])
    frame = pd.DataFrame({setup.perturbation_key: pd.Categorical(labels)})
    for key, value in zip(covariate_keys, context_values):
        frame[key] = pd.Categorical([value] * len(labels))
    frame[setup.dose_key or "dose"] = pd.Categorical(np.concatenate([[r[1]] * r[3] for r in rows]))
    if setup.time_key is not None:
        frame[setup.time_key] = np.concatenate([[r[2]] * r[3] for r in rows]).astype(float)
    frame.index = [f"{label}-{i}" for i, label in enumerate(labels)]
    return frame
