"""Time courses of cells that were each measured once: trajectories by chained optimal transport.

Measuring a cell destroys it, so no cell is seen at two time points. A time course of a
condition is rebuilt from its snapshots: the cells drawn at ``t_{k+1}`` are reordered by an
exact assignment (minimal total squared latent distance) to the cells drawn at ``t_k``, and
chaining these assignments through the ``T`` time points gives ``n`` trajectories (the
optimal-transport reading of time courses, Schiebinger et al. 2019). A velocity backbone
over time (``over_time``, e.g. ``mamba``) is trained and sampled on such
``(n, T, D)`` trajectories.
"""

from __future__ import annotations

import torch

from ._coupling import batched_assignment


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
