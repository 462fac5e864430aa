"""Time courses of cells that were each measured once: trajectories by chained optimal transport.

Measuring a cell destroys it, so no cell is seen at two time points. A time course of a
condition is rebuilt from its snapshots: the cells drawn at ``t_{k+1}`` are reordered by an
exact assignment (minimal total squared latent distance) to the cells drawn at ``t_k``, and
chaining these assignments through the ``T`` time points gives ``n`` trajectories (the
optimal-transport reading of time courses, Schiebinger et al. 2019). A velocity backbone
over time (``sequence_over_time``, e.g. ``mamba``) is trained and sampled on such
``(n, T, D)`` trajectories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..data._conditions import Condition
from ..models._token_shift import TokenShifts
from ._groups import _contiguous


def batched_assignment(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact optimal-transport assignment of ``b``'s rows to ``a``'s rows, for ``G`` independent problems.

    Parameters
    ----------
    a, b
        ``(G, n, F)`` rows to pair within each of the ``G`` problems.

    Returns
    -------
    torch.Tensor
        ``(G, n)`` long on ``a.device``: ``b[g, perm[g, i]]`` is paired with ``a[g, i]``, minimising
        ``sum_i |a[g, i] - b[g, perm[g, i]]|^2`` for every ``g``.
    """
    if a.dim() != 3 or a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape (G, n, F); got {tuple(a.shape)} and {tuple(b.shape)}.")
    with torch.no_grad():
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise ValueError("The states to pair must be finite; found NaN or inf.")
        cost = torch.cdist(a.float(), b.float()).square().cpu().double().numpy()  # (G, n, n), one transfer
    # One small assignment per problem: the loop is over groups, never over cells.
    perm = np.stack([linear_sum_assignment(c)[1] for c in cost]) if len(cost) else np.zeros((0, a.shape[1]))
    return torch.as_tensor(perm, dtype=torch.long, device=a.device)


def chain_trajectories(states: torch.Tensor) -> torch.Tensor:
    """Link independently drawn cells of consecutive time points into trajectories.

    Parameters
    ----------
    states
        ``(G, n, T, D)``: for each of ``G`` groups, ``n`` cells drawn at each of ``T`` time
        points (in time order); ``states[g, :, k]`` are the cells at time point ``k``, in any order.

    Returns
    -------
    torch.Tensor
        ``(G, n, T)`` long ``order``: trajectory ``i`` of group ``g`` passes through cell
        ``order[g, i, k]`` (among the ``n`` cells at time point ``k``). ``order[:, :, 0]`` is the
        identity; the cells at ``k + 1`` are assigned to trajectories by exact optimal transport
        to the trajectories' cells at ``k``.

    Examples
    --------
    >>> cells = torch.randn(1, 5, 1, 3)
    >>> shuffled = torch.randperm(5)
    >>> states = torch.cat([cells, cells[:, shuffled] + 0.01], dim=2)  # t1: the same cells, shuffled
    >>> order = chain_trajectories(states)
    >>> bool((shuffled[order[0, :, 1]] == torch.arange(5)).all())
    True
    """
    if states.dim() != 4:
        raise ValueError(f"states must have shape (G, n, T, D), got {tuple(states.shape)}.")
    n_groups, n, n_times, dim = states.shape
    order = torch.arange(n, device=states.device).view(1, n, 1).repeat(n_groups, 1, n_times)
    previous = states[:, :, 0]  # (G, n, D): the trajectories so far, at their latest time point
    for k in range(1, n_times):
        perm = batched_assignment(previous, states[:, :, k])  # (G, n)
        order[:, :, k] = perm
        previous = states[:, :, k].gather(1, perm[..., None].expand(-1, -1, dim))
    return order


def chain_states(states: torch.Tensor, cells_per_group: int) -> torch.Tensor:
    """Chain cells drawn per time point into trajectories, within consecutive blocks of rows.

    Parameters
    ----------
    states
        ``(B, T, D)``: row ``i`` holds independently drawn cells at the ``T`` time points; rows
        come in blocks of ``cells_per_group`` that belong to one group each.
    cells_per_group
        Rows per block (``B`` must be a multiple of it).

    Returns
    -------
    torch.Tensor
        ``(B, T, D)``: the same cells, reordered within each block and time point so that every
        row is a trajectory (see :func:`chain_trajectories`).
    """
    batch, n_times, dim = states.shape
    if cells_per_group < 1 or batch % cells_per_group:
        raise ValueError(f"{batch} rows do not split into blocks of cells_per_group={cells_per_group}.")
    blocks = states.view(batch // cells_per_group, cells_per_group, n_times, dim)
    order = chain_trajectories(blocks)  # (G, n, T)
    return blocks.gather(1, order[..., None].expand(-1, -1, -1, dim)).view(batch, n_times, dim)


@dataclass
class TrajectoryIndex:
    """Cells by (trajectory group, time point) and control cells by (context, time point).

    A trajectory group is one condition in one context, followed over the model's ``T`` time
    points. Cells are sorted into contiguous blocks once, so a minibatch is drawn with a few
    vectorised index operations.

    Attributes
    ----------
    order, start, size
        Block ``g * T + k`` (cells of group ``g`` at time point ``k``) is
        ``order[start[g * T + k]:][:size[g * T + k]]``.
    group_context
        ``(G,)`` context of each group.
    source_order, source_start, source_size
        The same layout for control cells, block ``c * T + k`` for context ``c``.
    n_times
        Number ``T`` of time points.
    """

    order: torch.Tensor
    start: torch.Tensor
    size: torch.Tensor
    group_context: torch.Tensor
    source_order: torch.Tensor
    source_start: torch.Tensor
    source_size: torch.Tensor
    n_times: int

    @property
    def n_groups(self) -> int:
        """Number of trajectory groups."""
        return len(self.group_context)

    @classmethod
    def build(
        cls,
        group: np.ndarray,
        time_code: np.ndarray,
        context: np.ndarray,
        is_control: np.ndarray,
        n_groups: int,
        n_times: int,
        n_contexts: int,
    ) -> TrajectoryIndex:
        """Index cells by ``(group, time point)`` (targets) and control cells by ``(context, time point)``.

        Parameters
        ----------
        group, time_code, context
            ``(N,)`` trajectory group, time point (``0..T-1``) and context of every cell.
        is_control
            ``(N,)`` whether the cell is a control cell.
        n_groups, n_times, n_contexts
            Number of groups, time points and contexts (codes run from 0).
        """
        group, time_code, context = (np.asarray(a, dtype=np.int64) for a in (group, time_code, context))
        order, start, size = _contiguous(group * n_times + time_code, n_groups * n_times)
        controls = np.flatnonzero(is_control)
        local, source_start, source_size = _contiguous(
            context[controls] * n_times + time_code[controls], n_contexts * n_times
        )
        group_context = np.zeros(n_groups, dtype=np.int64)
        group_context[group] = context
        return cls(
            order=torch.as_tensor(order),
            start=torch.as_tensor(start),
            size=torch.as_tensor(size),
            group_context=torch.as_tensor(group_context),
            source_order=torch.as_tensor(controls[local]),
            source_start=torch.as_tensor(source_start),
            source_size=torch.as_tensor(source_size),
            n_times=int(n_times),
        )

    def sample(
        self, groups: torch.Tensor, cells_per_group: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw cells of every time point for the given groups (with replacement), not yet chained.

        Returns
        -------
        target, source, batch_group
            ``(B, T)`` cell indices of targets and of control cells of the group's context at
            each time point, and ``(B,)`` the group of each row; ``B = len(groups) * cells_per_group``.
        """
        batch_group = groups.repeat_interleave(cells_per_group)  # (B,)
        offsets = torch.arange(self.n_times)
        blocks = batch_group[:, None] * self.n_times + offsets  # (B, T)
        u = torch.rand(blocks.shape, generator=generator)
        target = self.order[self.start[blocks] + (u * self.size[blocks]).long()]
        source_blocks = self.group_context[batch_group][:, None] * self.n_times + offsets  # (B, T)
        u = torch.rand(blocks.shape, generator=generator)
        source = self.source_order[self.source_start[source_blocks] + (u * self.source_size[source_blocks]).long()]
        return target, source, batch_group


def time_resolved_shifts(
    latent: np.ndarray,
    conditions: Sequence[Condition],
    context: np.ndarray,
    time_code: np.ndarray,
    n_contexts: int,
    n_times: int,
    tokens: Sequence[str],
) -> TokenShifts:
    """Additive token shifts measured separately at every time point (``source_shift="additive"`` over time).

    A perturbation's effect grows after it is applied, so one shift pooled over time would
    start early time points too far and late ones too near. Row ``c * T + k`` of the table is
    the shift in context ``c`` at time point ``k``: the mean latent of the token alone there
    minus the mean latent of the control cells there. A token unmeasured alone in context
    ``c`` takes its mean shift over the other contexts at the same time point.

    Returns
    -------
    TokenShifts
        ``table`` of shape ``(n_contexts * n_times, n_tokens, D)``; index it with
        ``context * n_times + time point``.
    """
    context, time_code = np.asarray(context, dtype=np.int64), np.asarray(time_code, dtype=np.int64)
    pooled = TokenShifts.from_cells(latent, conditions, context * n_times + time_code, n_contexts * n_times, tokens)
    # from_cells transfers an unmeasured (context, time) entry from every measured one; redo it within time points.
    n_tokens, dim = len(tokens), np.shape(latent)[1]
    measured = pooled.measured.numpy().reshape(n_contexts, n_times, n_tokens)
    table = pooled.table.numpy().reshape(n_contexts, n_times, n_tokens, dim)
    own = np.where(measured[..., None], table, 0.0)
    elsewhere = own.sum(axis=0) / np.maximum(measured.sum(axis=0), 1)[..., None]  # (T, n_tokens, D)
    table = np.where(measured[..., None], table, elsewhere[None])
    return TokenShifts(
        torch.as_tensor(table.reshape(n_contexts * n_times, n_tokens, dim), dtype=torch.float32),
        torch.as_tensor(measured.reshape(n_contexts * n_times, n_tokens)),
    )
