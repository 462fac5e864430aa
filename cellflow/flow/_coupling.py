"""Pair source and target cells within a minibatch.

Training a rectified flow on independent pairs ``(z0, z1)`` makes the learned paths cross
and curve; pairing the cells of a minibatch by optimal transport (minibatch OT,
Tong et al. 2023; Pooladian et al. 2023) gives straighter paths that need fewer solver
steps. The pairing is a permutation ``perm`` with ``z0[perm[i]]`` paired with ``z1[i]``.

Why an exact assignment (Hungarian, :func:`scipy.optimize.linear_sum_assignment`) rather
than Sinkhorn (entropic OT, e.g. POT's ``ot.sinkhorn``):

- it returns a true permutation, the exact minimiser of the squared-Euclidean cost,
  with no entropic blur and no regularisation strength to tune or to anneal;
- pairs are formed per condition, and a condition holds few cells in one minibatch
  (tens to a few hundred), so the ``O(n^3)`` solve costs far less than the forward and
  backward pass of a training step.

For large ``n`` (thousands of cells per assignment) Sinkhorn's ``O(n^2)`` iterations on
the GPU would be the better choice.

:func:`population_ot_partners` pairs whole populations once instead (each target cell with
a source cell, fixed for the run). Re-pairing every minibatch gives a control cell another
partner at every step; where source and target are close (a condition whose cells, after
the latent-arithmetic shift, look like the control cells) and few cells are measured, the
velocity regression then averages those partners and the flow contracts the cells towards
their mean (measured by ``benchmarks/flow_spread.py``; see the results page).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["batched_assignment", "ot_pairing_grouped", "population_ot_partners", "random_pairing"]


def _check_pair(z0: torch.Tensor, z1: torch.Tensor) -> None:
    if z0.dim() < 2 or z1.dim() < 2:
        raise ValueError(
            f"z0 and z1 must have shape (B, D) or (B, T, D); got z0 {tuple(z0.shape)} and z1 {tuple(z1.shape)}."
        )
    if z0.shape[0] != z1.shape[0]:
        raise ValueError(
            f"z0 and z1 must have the same number of rows to be paired one to one; got {z0.shape[0]} and "
            f"{z1.shape[0]}. Subsample the larger side first."
        )
    if z0.shape[1:] != z1.shape[1:]:
        raise ValueError(
            f"z0 and z1 must have the same trailing shape; got {tuple(z0.shape[1:])} and {tuple(z1.shape[1:])}."
        )


def _check_groups(groups: torch.Tensor, n_rows: int) -> None:
    if not isinstance(groups, torch.Tensor):
        raise TypeError(f"groups must be a torch.Tensor of integer group ids, got {type(groups).__name__}.")
    if groups.dtype.is_floating_point or groups.dtype.is_complex or groups.dtype == torch.bool:
        raise TypeError(f"groups must hold integer group ids, got dtype {groups.dtype}.")
    if groups.dim() != 1 or groups.shape[0] != n_rows:
        raise ValueError(f"groups must have shape (B,) = ({n_rows},), one id per row; got {tuple(groups.shape)}.")


def _assign(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """Exact assignment for flattened ``(n, F)`` rows; returns ``perm`` on the CPU."""
    if not (torch.isfinite(z0).all() and torch.isfinite(z1).all()):
        raise ValueError("z0 and z1 must be finite to be paired; found NaN or inf.")
    # cost[i, j] = |z1[i] - z0[j]|^2: rows index z1, so the column chosen for row i is perm[i].
    cost = torch.cdist(z1, z0).square()
    _, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    return torch.from_numpy(cols.astype(np.int64))


def ot_pairing_grouped(z0: torch.Tensor, z1: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Optimal-transport pairing restricted to rows with the same group id.

    Parameters
    ----------
    z0
        ``(B, D)`` or ``(B, T, D)`` source states.
    z1
        Target states, same shape as ``z0``.
    groups
        ``(B,)`` integer group ids (e.g. condition index), shared by the rows of ``z0`` and
        ``z1``: row ``i`` of each side belongs to group ``groups[i]``, so every group has as
        many source as target rows.

    Returns
    -------
    torch.Tensor
        ``(B,)`` long permutation ``perm`` with ``groups[perm[i]] == groups[i]`` and, within
        each group, the exact optimal-transport pairing (minimal total squared Euclidean distance).
    """
    _check_pair(z0, z1)
    _check_groups(groups, z0.shape[0])
    with torch.no_grad():
        flat0, flat1 = z0.flatten(1), z1.flatten(1)
        perm = torch.arange(z0.shape[0], device=z0.device)
        # One assignment per group (condition); the loop is over groups, never over cells.
        for group in torch.unique(groups):
            rows = torch.nonzero(groups == group).squeeze(1).to(z0.device)
            local = _assign(flat0[rows], flat1[rows]).to(z0.device)
            perm[rows] = rows[local]
    return perm


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
        # One small assignment per problem: the loop is over groups, never over cells.
        perm = [_assign(b[g].float(), a[g].float()) for g in range(a.shape[0])]
    if not perm:
        return torch.zeros((0, a.shape[1]), dtype=torch.long, device=a.device)
    return torch.stack(perm).to(a.device)


def population_ot_partners(
    targets: torch.Tensor,
    sources: torch.Tensor,
    *,
    block: int = 1024,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A source partner for every target cell, by exact optimal transport between the populations.

    Parameters
    ----------
    targets
        ``(n, D)`` target states (one condition in one context).
    sources
        ``(m, D)`` source states (the control cells of that context).
    block
        Largest number of targets per assignment: larger populations are shuffled and
        split into blocks, each paired with the sources (at most ``2 * block`` of them, drawn
        at random), which bounds the ``O(n^3)`` cost.
    generator
        CPU generator for the shuffle and the draws.

    Returns
    -------
    torch.Tensor
        ``(n,)`` long indices into ``sources``. Within a block, distinct targets get distinct
        sources while there are enough of them (sources are repeated when the block holds more
        targets than sources), chosen to minimise the total squared Euclidean distance.
    """
    if targets.dim() != 2 or sources.dim() != 2 or targets.shape[1] != sources.shape[1]:
        raise ValueError(
            f"targets and sources must be (n, D) and (m, D) with the same D; got {tuple(targets.shape)} "
            f"and {tuple(sources.shape)}."
        )
    if len(sources) == 0:
        raise ValueError("sources is empty: there is nothing to pair the targets with.")
    if block < 1:
        raise ValueError(f"block={block} must be at least 1.")
    n, m = len(targets), len(sources)
    partners = torch.empty(n, dtype=torch.long)
    order = torch.randperm(n, generator=generator)
    with torch.no_grad():
        for rows in torch.split(order, block):
            candidates = torch.arange(m) if m <= 2 * block else torch.randperm(m, generator=generator)[: 2 * block]
            candidates = candidates.repeat(-(-len(rows) // len(candidates)))  # enough columns for every row
            cost = torch.cdist(targets[rows].double().cpu(), sources[candidates].double().cpu()).square()
            picked, cols = linear_sum_assignment(cost.numpy())
            partners[rows[torch.from_numpy(picked)]] = candidates[torch.from_numpy(cols)]
    return partners


def random_pairing(
    z0: torch.Tensor,
    z1: torch.Tensor,
    groups: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random pairing (the independent-coupling baseline), optionally within groups.

    Parameters
    ----------
    z0, z1
        Source and target states, as in :func:`ot_pairing_grouped`.
    groups
        Optional ``(B,)`` integer group ids, as in :func:`ot_pairing_grouped`; rows are then
        shuffled only within their group.
    generator
        Optional CPU :class:`torch.Generator` for a reproducible draw.

    Returns
    -------
    torch.Tensor
        ``(B,)`` long permutation on ``z0.device``.
    """
    _check_pair(z0, z1)
    n_rows = z0.shape[0]
    if groups is None:
        return torch.randperm(n_rows, generator=generator).to(z0.device)
    _check_groups(groups, n_rows)
    groups_cpu = groups.cpu()
    perm = torch.arange(n_rows)
    for group in torch.unique(groups_cpu):
        rows = torch.nonzero(groups_cpu == group).squeeze(1)
        perm[rows] = rows[torch.randperm(rows.shape[0], generator=generator)]
    return perm.to(z0.device)
