"""The straight (rectified-flow) probability path between two samples.

A source sample ``z0`` and a target sample ``z1`` are joined by the straight line
``z_s = (1 - s) z0 + s z1``; its velocity ``dz_s/ds = z1 - z0`` does not depend on ``s``,
which is the regression target of the velocity network.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["LinearPath", "PathSample", "sample_flow_time"]


class PathSample(NamedTuple):
    """A batch of points on the path, with their endpoints and velocities.

    Attributes
    ----------
    z0
        ``(B, ...)`` source states (flow time 0).
    z1
        ``(B, ...)`` target states (flow time 1).
    s
        ``(B,)`` flow times.
    zs
        ``(B, ...)`` states at flow time ``s``.
    velocity
        ``(B, ...)`` ``dz_s/ds`` at ``s``: the regression target.
    """

    z0: torch.Tensor
    z1: torch.Tensor
    s: torch.Tensor
    zs: torch.Tensor
    velocity: torch.Tensor


def _expand_time(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View ``s`` of shape ``(B,)`` as ``(B, 1, ..., 1)`` so it broadcasts over ``like``."""
    return s.reshape(s.shape[0], *([1] * (like.dim() - 1)))


class LinearPath:
    """Straight path ``z_s = (1 - s) z0 + s z1`` with constant velocity ``z1 - z0``.

    Works for states of any shape ``(B, ...)``: vectors ``(B, D)`` or time courses
    ``(B, T, D)``; each row has its own flow time.
    """

    def sample(self, z0: torch.Tensor, z1: torch.Tensor, s: torch.Tensor) -> PathSample:
        """Points on the paths from ``z0`` to ``z1`` at flow times ``s``.

        Parameters
        ----------
        z0
            ``(B, ...)`` source states.
        z1
            ``(B, ...)`` target states, same shape as ``z0``.
        s
            ``(B,)`` flow times, usually in ``[0, 1]``.

        Returns
        -------
        PathSample
            ``zs = (1 - s) z0 + s z1`` and ``velocity = z1 - z0``.
        """
        if z0.shape != z1.shape:
            raise ValueError(f"z0 and z1 must have the same shape, got z0 {tuple(z0.shape)} and z1 {tuple(z1.shape)}.")
        if z0.dim() < 1:
            raise ValueError("z0 and z1 need a batch dimension: expected shape (B, ...), got a scalar.")
        if s.dim() != 1 or s.shape[0] != z0.shape[0]:
            raise ValueError(
                f"s must have shape (B,) = ({z0.shape[0]},), one flow time per row of z0; got {tuple(s.shape)}."
            )
        s_b = _expand_time(s.to(z0.dtype), z0)  # (B, 1, ..., 1)
        zs = (1 - s_b) * z0 + s_b * z1
        return PathSample(z0=z0, z1=z1, s=s, zs=zs, velocity=z1 - z0)


def sample_flow_time(
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``n`` flow times uniformly in ``[0, 1]``.

    Parameters
    ----------
    n
        Number of times to draw.
    generator
        Optional :class:`torch.Generator` for reproducible draws (must live on ``device``).
    device
        Device of the returned tensor.
    dtype
        Floating dtype of the result.

    Returns
    -------
    torch.Tensor
        ``(n,)`` flow times.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}.")
    return torch.rand(n, generator=generator, device=device, dtype=dtype)
