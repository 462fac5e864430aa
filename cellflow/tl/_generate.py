"""``cf.tl.generate``: predicted cells of any condition, as an AnnData of counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._constants import LATENT_KEY
from ..flow import ConditionBatch
from ..pp._conditions import parse_condition

if TYPE_CHECKING:
    from anndata import AnnData

    from ..models._cellflow import CellFlow


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
        Cells to generate per condition (and time point).
    covariates
        Context of the generated cells, e.g. ``{"cell_type": "K562"}``; may be omitted when
        the training data had a single context.
    doses
        One dose (or dose string aligned with the tokens, ``"1+0.5"``) per condition;
        default: every token at dose 1.
    times
        Time points to generate (models set up with ``time_key``). A backbone that takes time
        as part of the condition (``mlp``, ``set_attention``) generates each time point
        separately, from control cells of the context. A backbone over time (``mamba``)
        carries ``n_cells`` control trajectories of the context (control cells chained by
        optimal transport across the training time points) through the flow at once and
        returns their cells at ``times``, which must be training time points.
    seed
        Seed of the source draw and of the count sampling: the same seed gives the same cells.
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
    """
    import anndata as ad

    model._require_trained()
    module = model.module
    method, steps = module.sampling.solver(method, steps)
    setup, codec = model.setup, model.codec
    conditions = [conditions] if isinstance(conditions, str) else list(conditions)
    if not conditions:
        raise ValueError("conditions is empty; give at least one perturbation label.")
    if n_cells < 1:
        raise ValueError(f"n_cells={n_cells} must be at least 1.")
    if doses is not None and len(doses) != len(conditions):
        raise ValueError(f"doses has {len(doses)} entries for {len(conditions)} conditions; give one per condition.")
    parsed = [
        parse_condition(c, control=setup.control, sep=setup.combo_sep, dose=None if doses is None else doses[i])
        for i, c in enumerate(conditions)
    ]
    codec.check_tokens(parsed)
    _check_guidance(model, guidance)
    time_points = _time_points(model, times)
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


def _check_finite(z1: torch.Tensor, label: str, method: str, steps: int) -> None:
    """Raise before decoding if the flow produced NaN or infinite latents (the count sampler would fail obscurely)."""
    if not torch.isfinite(z1).all():
        raise ValueError(
            f"The flow produced non-finite latents for {label!r} (method={method!r}, steps={steps}). "
            "Try a smaller step (more steps, or method='heun'/'dopri5') or guidance closer to 1; "
            "if it persists, the model's weights are damaged: retrain it."
        )


def _check_guidance(model: CellFlow, guidance: float) -> None:
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
    times = [float(t) for t in ([times] if np.isscalar(times) else times)]
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
    keys = model.codec.covariate_keys
    covariates = dict(covariates or {})
    unknown = set(covariates) - set(keys)
    if unknown:
        raise ValueError(f"Unknown covariate(s) {sorted(unknown)}; the model was trained with covariates {keys}.")
    if len(covariates) < len(keys):
        contexts = model.module.reference.contexts
        if len(contexts) == 1:
            return contexts[0]
        missing = [k for k in keys if k not in covariates]
        options = {k: model.codec.covariate_categories[k][:10] for k in missing}
        raise ValueError(f"covariates must give {missing} (the model has several contexts): choose from {options}.")
    return tuple(str(covariates[k]) for k in keys)


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
