"""Train a flow module on the latents of the training cells, and reflow it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..flow import ControlReference, FlowModule, SamplingInfo, TokenShifts, time_resolved_shifts
from ..pp._conditions import Condition
from ._config import FlowTrainingConfig, ReflowConfig
from ._design import TrainingDesign
from ._fit import fit_flow_plan
from ._groups import GroupIndex
from ._plan import FlowTrainingPlan
from ._validation import VALIDATION_SEED_OFFSET, fixed_validation_batches

REFLOW_PAIRS_OFFSET = 15485863  # the pairs' draws: seed + this, apart from each round's minibatch stream


def resolve_coupling(config: FlowTrainingConfig, module: FlowModule) -> FlowTrainingConfig:
    """The config with its coupling resolved for the module: fixed population pairs need fixed control sources.

    The default (``None``) becomes ``"ot"`` for control sources of single cells and
    ``"minibatch_ot"`` otherwise.

    Raises
    ------
    ValueError
        ``coupling="ot"`` with ``source="noise"`` or a backbone over time, where it cannot mean
        what it says; the message names the couplings that work.
    """
    fixed_sources = module.source == "control" and not module.over_time
    if config.coupling is None:
        return config.replace(coupling="ot" if fixed_sources else "minibatch_ot")
    if config.coupling == "ot" and not fixed_sources:
        why = (
            "source='noise' draws new sources every step"
            if module.source == "noise"
            else ("a backbone over time re-chains its trajectories every minibatch")
        )
        raise ValueError(
            f"coupling='ot' pairs every target cell once with a fixed control cell, but {why}. "
            "Use coupling='minibatch_ot' (re-paired by optimal transport in every minibatch) or 'random'."
        )
    return config


def fit_latent_arithmetic(
    module: FlowModule,
    design: TrainingDesign,
    latent: np.ndarray,
    log_library: np.ndarray,
    batch: np.ndarray | None,
    conditions: Sequence[Condition],
    tokens: Sequence[str],
    *,
    source_shift: str,
    latent_scale: np.ndarray,
) -> None:
    """Give ``module`` its control reference, token shifts and library shifts, estimated from the training cells.

    Parameters
    ----------
    module
        The flow module (its ``reference`` and ``shifts`` are set).
    design
        Groups and contexts of the training cells.
    latent, log_library, batch
        ``(N, D)`` latent, ``(N,)`` log library size and VAE batch (or ``None``) of every cell.
    conditions
        Condition of every cell.
    tokens
        The model's token vocabulary.
    source_shift
        ``"measured"``, ``"additive"`` or ``"none"`` (see :class:`~cellflow.CellFlow`).
    latent_scale
        ``(N, D)`` posterior standard deviations of every cell (the reference keeps the control
        cells').

    Notes
    -----
    The library shifts are estimated whatever ``source_shift`` says, since the flow never moves
    library sizes: a measured condition's own mean change of the log library size, an unmeasured
    combination the sum of its tokens' (over time: the sum of its tokens' at each time point, as
    the latent shifts over time). With token features (``module.token_features``), a token
    measured nowhere takes the latent and library shifts its features predict
    (:class:`~cellflow.flow.TokenShifts`). With VAE batches, each cell's log library size is taken relative
    to the control cells of its batch first: a generated cell keeps its source's batch and depth,
    so a condition sequenced mostly in a deeper batch must not read as one that raises counts.
    """
    control = design.is_control
    module.set_reference(
        ControlReference.from_cells(
            latent[control],
            log_library[control],
            np.zeros(control.sum(), dtype=np.int64) if batch is None else batch[control],
            design.context[control],
            design.contexts,
            time=design.time[control] if design.has_time else None,
            latent_scale=latent_scale[control],
        )
    )
    n_contexts, n_times = len(design.contexts), len(design.time_points)

    features = module.token_features  # tokens measured nowhere take the shifts their features predict

    def shifts(values: np.ndarray, mode: str) -> TokenShifts:
        if module.over_time:  # per time point, additive (row context * T + k)
            codes = (design.context, design.time_code)
            return time_resolved_shifts(values, conditions, *codes, n_contexts, n_times, tokens, features)
        return TokenShifts.from_cells(values, conditions, design.context, n_contexts, tokens, mode, features)

    module.library_shifts = shifts(_within_batch(log_library, batch, control)[:, None], "measured")
    module.shifts = None
    if source_shift == "none":
        return
    if module.over_time and source_shift != "additive":
        raise ValueError(
            f"source_shift={source_shift!r} is not supported with a backbone over time; "
            "use 'additive' (shifts measured per time point) or 'none'."
        )
    module.shifts = shifts(latent, source_shift)


def _within_batch(log_library: np.ndarray, batch: np.ndarray | None, control: np.ndarray) -> np.ndarray:
    """Log library sizes relative to the mean of their batch's control cells (all its cells where it has none)."""
    log_library = np.asarray(log_library, dtype=np.float64)
    if batch is None:
        return log_library
    relative = log_library.copy()
    for code in np.unique(batch):
        rows = batch == code
        reference = rows & control if (rows & control).any() else rows
        relative[rows] -= log_library[reference].mean()
    return relative


def training_plan(
    module: FlowModule, design: TrainingDesign, latent: np.ndarray, config: FlowTrainingConfig, *, seed: int
) -> tuple[FlowTrainingPlan, GroupIndex]:
    """The training plan of the module's flow on the training cells, and the index it draws minibatches from.

    Targets are in the flow's coordinates (minus their group's shift); with ``coupling="ot"``
    every target cell gets its control partner once, by exact optimal transport over the
    populations (seeded by ``seed``).
    """
    config = resolve_coupling(config, module)
    index = design.index()
    group_shift = module.shift(design.table)
    latent = torch.as_tensor(latent, dtype=torch.float32)
    partners = None
    if config.coupling == "ot":
        partners = index.population_partners(latent, group_shift, seed=seed)
    plan = FlowTrainingPlan(
        module, design.table, latent, config, group_shift=group_shift, source_partner=partners, seed=seed
    )
    return plan, index


@torch.no_grad()
def flow_loss(
    module: FlowModule,
    design: TrainingDesign,
    latent: np.ndarray,
    config: FlowTrainingConfig,
    groups: torch.Tensor,
    *,
    seed: int,
) -> float:
    """Flow-matching loss of the module on fixed minibatches of ``groups``, as early stopping computes it.

    The minibatches and flow times are drawn with ``seed + VALIDATION_SEED_OFFSET``, so with
    the training seed and the validation groups this is the validation loss of training.
    """
    plan, index = training_plan(module, design, latent, config, seed=seed)
    module.eval()
    batches = fixed_validation_batches(
        index, groups, config.groups_per_batch, config.cells_per_group, seed + VALIDATION_SEED_OFFSET
    )
    losses = torch.stack([plan.validation_loss(batch) for batch in batches])
    sizes = torch.tensor([len(batch[2]) for batch in batches], dtype=losses.dtype)
    return float((losses * sizes).sum() / sizes.sum())


def train_flow(
    module: FlowModule,
    design: TrainingDesign,
    latent: np.ndarray,
    config: FlowTrainingConfig,
    *,
    seed: int,
    validation_groups: torch.Tensor | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    progress_bar: bool = True,
    trainer_kwargs: dict | None = None,
    checkpoint_dir: Path | None = None,
) -> dict:
    """Train the module's flow on the training cells (from its current weights).

    The module must have its reference and shifts (:func:`fit_latent_arithmetic`); the plan
    is :func:`training_plan`'s.

    Returns
    -------
    What :func:`~cellflow.train.fit_flow_plan` returns.
    """
    config = resolve_coupling(config, module)
    plan, index = training_plan(module, design, latent, config, seed=seed)
    module.sampling = SamplingInfo()  # no longer what it was, even if training is interrupted
    fit = fit_flow_plan(
        plan,
        index,
        seed=seed,
        validation_groups=validation_groups,
        accelerator=accelerator,
        devices=devices,
        progress_bar=progress_bar,
        trainer_kwargs=trainer_kwargs,
        checkpoint_dir=checkpoint_dir,
    )
    module.sampling = SamplingInfo(null_condition=config.condition_dropout > 0)
    return fit


@torch.no_grad()
def flow_pairs(
    plan: FlowTrainingPlan,
    index: GroupIndex,
    *,
    pairs_per_group: int,
    method: str = "heun",
    steps: int = 16,
    generator: torch.Generator | None = None,
    chunk: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Carry fresh sources of every training group through the flow's ODE (the pairs of reflow).

    Parameters
    ----------
    plan
        A training plan on the training cells (its flow module, groups, latents and sources are used).
    index
        Cells of every group and control cells of every context.
    pairs_per_group
        Sources drawn per group (with replacement from the context's control cells, chained
        into trajectories over time, or noise).
    method, steps
        ODE solver that carries them.
    generator
        Random source of the draws.
    chunk
        Rows integrated at once (bounds memory).

    Returns
    -------
    z0, z1, group
        ``(P, D)`` sources, ``(P, D)`` where the flow carried them (in the flow's coordinates)
        and ``(P,)`` the group of each pair, ``P = n_groups * pairs_per_group``; ``(P, T, D)``
        trajectories over time.
    """
    module = plan.flow
    groups = torch.arange(index.n_groups)
    _, source, batch_group = index.sample(groups, pairs_per_group, generator)
    z0 = plan.source_states(source, generator, cells_per_group=pairs_per_group)
    z1 = torch.empty_like(z0)
    for lo in range(0, len(z0), chunk):
        rows = slice(lo, lo + chunk)
        cond = module.condition(plan.groups(batch_group[rows]))
        z1[rows], _ = module.transport(z0[rows], cond, method=method, steps=steps)
    return z0, z1, batch_group.numpy()


def reflow(
    module: FlowModule,
    design: TrainingDesign,
    latent: np.ndarray,
    flow_config: FlowTrainingConfig,
    config: ReflowConfig,
    *,
    steps: int,
    seed: int,
    accelerator: str = "auto",
    devices: int | str = "auto",
    progress_bar: bool = True,
    trainer_kwargs: dict | None = None,
) -> float:
    """Straighten the module's flow: rounds of training on pairs drawn from its own ODE (Liu et al. 2023).

    Each round draws ``config.pairs_per_group`` fresh sources for every training group,
    carries them with the current flow, and trains the flow further on these fixed (source,
    end point) pairs for ``steps`` steps with the minibatch shape of ``flow_config``.

    Returns
    -------
    ``{"final_loss": the last round's final training loss, "curve": [step, loss] of every
    round, steps counted on from round to round}``.
    """
    if config.rounds < 1:
        raise ValueError(f"reflow needs rounds >= 1, got {config.rounds}.")
    index = design.index()
    # A plan on the training cells draws the pairs' sources; its own random stream is not used.
    sources = FlowTrainingPlan(module, design.table, torch.as_tensor(latent, dtype=torch.float32), flow_config)
    generator = torch.Generator().manual_seed(seed + REFLOW_PAIRS_OFFSET)
    rounds_done = module.sampling.reflow_rounds
    fit, curve, steps_before = {"final_loss": float("nan")}, [], 0
    for round_ in range(config.rounds):
        last = round_ == config.rounds - 1
        module.cpu().eval()
        z0, z1, group = flow_pairs(
            sources,
            index,
            pairs_per_group=config.pairs_per_group,
            method=config.method,
            steps=config.ode_steps,
            generator=generator,
        )
        # Every pair (a cell, or a whole trajectory over time) is one row; sources are fixed, not drawn.
        n_groups, n_contexts = design.n_groups, len(design.contexts)
        pair_index = GroupIndex.build(
            group, index.group_context[group].numpy(), np.ones(len(group), dtype=bool), n_groups, n_contexts
        )
        round_config = flow_config.replace(
            steps=steps, lr=config.lr, distill_steps=config.distill_steps if last else None
        )
        plan = FlowTrainingPlan(module, design.table, z1, round_config, pair_source=z0, seed=seed + 1 + round_)
        # The weights change from here on: say so even if the round is interrupted.
        module.sampling = replace(module.sampling, reflow_rounds=rounds_done + round_ + 1, distill_steps=0)
        fit = fit_flow_plan(
            plan,
            pair_index,
            seed=seed + 1 + round_,
            accelerator=accelerator,
            devices=devices,
            progress_bar=progress_bar,
            trainer_kwargs=trainer_kwargs,
        )
        curve += [[steps_before + step, loss] for step, loss in fit["curve"]]
        steps_before += fit["steps"]
    module.sampling = replace(module.sampling, distill_steps=config.distill_steps or 0)
    return {"final_loss": fit["final_loss"], "curve": curve}
