"""Cells grouped by condition and context, as index tensors the trainer samples from.

A *group* is one perturbation (with its doses) in one context (a combination of
covariate values) at one time point. Its source cells are the control cells of the same
context. Cells are sorted by group once, so a minibatch is drawn with a few vectorised
index operations and no Python loop over cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class GroupIndex:
    """Target cells by group and source (control) cells by context.

    Attributes
    ----------
    order
        ``(N,)`` cell indices sorted by group; group ``g`` owns ``order[start[g]:start[g] + size[g]]``.
    start, size
        ``(G,)`` offsets and sizes of each group in ``order``.
    group_context
        ``(G,)`` context of each group.
    source_order, source_start, source_size
        The same layout for the control cells of each context (``(C,)`` offsets and sizes).
    """

    order: torch.Tensor
    start: torch.Tensor
    size: torch.Tensor
    group_context: torch.Tensor
    source_order: torch.Tensor
    source_start: torch.Tensor
    source_size: torch.Tensor

    @classmethod
    def build(cls, group: np.ndarray, context: np.ndarray, is_control: np.ndarray, n_groups: int, n_contexts: int):
        """Index cells by ``group`` (targets) and control cells by ``context`` (sources).

        Parameters
        ----------
        group
            ``(N,)`` group code of every cell.
        context
            ``(N,)`` context code of every cell.
        is_control
            ``(N,)`` whether the cell is a control cell.
        n_groups, n_contexts
            Number of groups and contexts (codes run from 0).
        """
        order, start, size = _contiguous(group, n_groups)
        controls = np.flatnonzero(is_control)
        src_local, src_start, src_size = _contiguous(context[controls], n_contexts)
        group_context = np.zeros(n_groups, dtype=np.int64)
        group_context[group] = context
        return cls(
            order=torch.as_tensor(order),
            start=torch.as_tensor(start),
            size=torch.as_tensor(size),
            group_context=torch.as_tensor(group_context),
            source_order=torch.as_tensor(controls[src_local]),
            source_start=torch.as_tensor(src_start),
            source_size=torch.as_tensor(src_size),
        )

    def sample(
        self, groups: torch.Tensor, cells_per_group: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw target and source cells for the given groups (with replacement).

        Returns
        -------
        target, source, batch_group
            ``(len(groups) * cells_per_group,)`` cell indices of targets and of their
            (not yet paired) sources, and the group of each row.
        """
        batch_group = groups.repeat_interleave(cells_per_group)
        u = torch.rand(batch_group.shape[0], generator=generator)
        target = self.order[self.start[batch_group] + (u * self.size[batch_group]).long()]
        ctx = self.group_context[batch_group]
        u = torch.rand(batch_group.shape[0], generator=generator)
        source = self.source_order[self.source_start[ctx] + (u * self.source_size[ctx]).long()]
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
            :func:`~cellflow.models.flow.population_ot_partners`).
        block
            Largest number of targets per assignment.

        Returns
        -------
        ``(N,)`` long: the partner (a cell index) of every cell of a group with control cells
        in its context; -1 for the others.
        """
        from ..models.flow import population_ot_partners

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
