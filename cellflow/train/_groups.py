"""Cells grouped by condition and context, as index tensors the trainer samples from.

A *group* is one perturbation (with its doses) in one context (a combination of
covariate values): at one time point for backbones that take time as part of the
condition (its sources: the control cells of the context), and followed over all ``T`` time
points for backbones over time (its sources at each time point: the context's control cells
measured then). Cells are sorted
into contiguous blocks of (group, time point) once, so a minibatch is drawn with a few
vectorised index operations and no Python loop over cells. Per-cell groups are the case
``T = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..flow import population_ot_partners


@dataclass
class GroupIndex:
    """Target cells by (group, time point) and source (control) cells by (context, time point).

    Attributes
    ----------
    order, start, size
        Cell indices sorted into blocks: block ``g * T + k`` (the cells of group ``g`` at time
        point ``k``) is ``order[start[g * T + k]:][:size[g * T + k]]``.
    group_context
        ``(G,)`` context of each group.
    source_order, source_start, source_size
        The same layout for control cells, block ``c * T + k`` for context ``c``.
    n_times
        Number ``T`` of time points a group is followed over (1 for per-cell groups).
    """

    order: torch.Tensor
    start: torch.Tensor
    size: torch.Tensor
    group_context: torch.Tensor
    source_order: torch.Tensor
    source_start: torch.Tensor
    source_size: torch.Tensor
    n_times: int = 1

    @property
    def n_groups(self) -> int:
        """Number of groups."""
        return len(self.group_context)

    @classmethod
    def build(
        cls,
        group: np.ndarray,
        context: np.ndarray,
        is_control: np.ndarray,
        n_groups: int,
        n_contexts: int,
        *,
        time_code: np.ndarray | None = None,
        n_times: int = 1,
    ) -> GroupIndex:
        """Index cells by ``(group, time point)`` (targets) and control cells by ``(context, time point)`` (sources).

        Parameters
        ----------
        group, context
            ``(N,)`` group and context code of every cell.
        is_control
            ``(N,)`` whether the cell is a control cell.
        n_groups, n_contexts
            Number of groups and contexts (codes run from 0).
        time_code, n_times
            ``(N,)`` time point (``0..T-1``) of every cell and the number ``T`` of time points,
            for groups followed over time; by default every group is one block (``T = 1``).
        """
        group, context = np.asarray(group, dtype=np.int64), np.asarray(context, dtype=np.int64)
        time_code = np.zeros_like(group) if time_code is None else np.asarray(time_code, dtype=np.int64)
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
        """Draw target and source cells of every time point for the given groups (with replacement).

        Returns
        -------
        target, source, batch_group
            ``(B, T)`` cell indices of targets and of their (not yet paired, not yet chained)
            sources, the control cells of the group's context at each time point, and ``(B,)``
            the group of each row; ``B = len(groups) * cells_per_group``.
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

    def population_partners(
        self, latent: torch.Tensor, shift: torch.Tensor | None = None, *, seed: int = 0, block: int = 1024
    ) -> torch.Tensor:
        """A fixed control-cell partner for every target cell: exact OT per group, computed once.

        Parameters
        ----------
        latent
            ``(N, D)`` latent of every cell.
        shift
            ``(G, D)`` shift subtracted from each group's targets before pairing (the flow's
            relative coordinates), or ``None``.
        seed
            Seed of the shuffles of large groups (see
            :func:`~cellflow.flow.population_ot_partners`).
        block
            Largest number of targets per assignment.

        Returns
        -------
        ``(N,)`` long: the partner (a cell index) of every cell of a group with control cells
        in its context; -1 for the others.
        """
        if self.n_times != 1:
            raise ValueError(
                "Population partners pair single cells; groups followed over time are paired per minibatch."
            )
        generator = torch.Generator().manual_seed(seed)
        partners = torch.full((latent.shape[0],), -1, dtype=torch.long)
        for group in range(len(self.size)):
            ctx = int(self.group_context[group])
            cells = self.order[self.start[group] : self.start[group] + self.size[group]]
            controls = self.source_order[self.source_start[ctx] : self.source_start[ctx] + self.source_size[ctx]]
            if len(cells) == 0 or len(controls) == 0:
                continue
            targets = latent[cells] if shift is None else latent[cells] - shift[group]
            local = population_ot_partners(targets, latent[controls], block=block, generator=generator)
            partners[cells] = controls[local]
        return partners


def _contiguous(codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable sort of ``codes`` into contiguous blocks: (order, block start, block size)."""
    order = np.argsort(codes, kind="stable")
    size = np.bincount(codes, minlength=n)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    return order.astype(np.int64), start.astype(np.int64), size.astype(np.int64)
