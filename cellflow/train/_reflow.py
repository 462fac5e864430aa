"""Reflow: new (source, target) pairs drawn from a trained flow's own ODE (Liu et al. 2023).

Training a rectified flow again on the pairs its ODE produces straightens its paths, so
few solver steps (down to one, after distillation) give what many gave before.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.backbones import EncodedCondition
from ..models.flow import ODESolver
from ._flow_module import FlowModule, TrajectoryFlowModule
from ._groups import GroupIndex
from ._trajectories import TrajectoryIndex


@torch.no_grad()
def flow_pairs(
    module: FlowModule,
    index: GroupIndex | TrajectoryIndex,
    *,
    pairs_per_group: int,
    method: str = "heun",
    steps: int = 16,
    generator: torch.Generator | None = None,
    chunk: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Carry fresh sources of every training group through the flow's ODE.

    Parameters
    ----------
    module
        The trained :class:`FlowModule` (its groups, latents, source and shifts are used), or a
        :class:`TrajectoryFlowModule`: its sources are then control trajectories, chained by
        optimal transport across the time points within each group's draw.
    index
        Cells of every group and control cells of every context (a :class:`TrajectoryIndex`
        for a :class:`TrajectoryFlowModule`).
    pairs_per_group
        Source cells drawn per group (with replacement from the context's control cells,
        or from noise for ``source="noise"``).
    method, steps
        ODE solver used to carry them (see :class:`~cellflow.models.flow.ODESolver`).
    generator
        Random source of the draws.
    chunk
        Rows integrated at once (bounds memory).

    Returns
    -------
    z0, z1, group
        ``(P, D)`` sources, ``(P, D)`` where the flow carried them (relative to the shifts) and
        ``(P,)`` the group of each pair, ``P = n_groups * pairs_per_group``; ``(P, T, D)``
        trajectories for a :class:`TrajectoryFlowModule`.
    """
    groups = torch.arange(len(index.group_context))
    _, source, batch_group = index.sample(groups, pairs_per_group, generator)
    if isinstance(module, TrajectoryFlowModule):
        z0 = module.start_states(source, batch_group, generator, cells_per_group=pairs_per_group)
    else:
        z0 = module.start_states(source, batch_group, generator)
    z1 = torch.empty_like(z0)
    for lo in range(0, len(z0), chunk):
        rows = slice(lo, lo + chunk)
        cond = module.encode_groups(batch_group[rows])

        def velocity(z, s, cond: EncodedCondition = cond):
            return module(z, s, cond)

        z1[rows] = ODESolver(velocity).sample(z0[rows], method=method, steps=steps)
    return z0, z1, batch_group.numpy()
