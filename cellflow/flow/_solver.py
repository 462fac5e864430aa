"""Integrate ``dz/ds = v(z, s)`` from ``s_span[0]`` to ``s_span[1]``.

Fixed-step Euler, Heun and classical Runge-Kutta 4 are written out here (a rectified flow
with straight paths needs only a few steps); ``"dopri5"`` hands over to
:func:`torchdiffeq.odeint` for an adaptive solve with error control.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._constants import SOLVER_METHODS

__all__ = ["ODESolver"]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _euler_step(f, z, s, h):
    return z + h * f(z, s)


def _heun_step(f, z, s, h):
    k1 = f(z, s)
    k2 = f(z + h * k1, s + h)
    return z + 0.5 * h * (k1 + k2)


def _rk4_step(f, z, s, h):
    k1 = f(z, s)
    k2 = f(z + 0.5 * h * k1, s + 0.5 * h)
    k3 = f(z + 0.5 * h * k2, s + 0.5 * h)
    k4 = f(z + h * k3, s + h)
    return z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


_STEPPERS = {"euler": _euler_step, "heun": _heun_step, "rk4": _rk4_step}


class ODESolver:
    """Sample from a flow by integrating its velocity field.

    Parameters
    ----------
    velocity_fn
        ``velocity_fn(z, s) -> dz/ds`` with ``z`` of shape ``(B, ...)`` and ``s`` a ``(B,)``
        tensor of flow times (same dtype and device as ``z``); returns a tensor shaped like
        ``z``. Bind the condition beforehand, e.g.
        ``lambda z, s: backbone(z, s, cond)``.

    Attributes
    ----------
    last_nfe
        Number of ``velocity_fn`` evaluations in the latest :meth:`sample` call
        (``None`` before the first call).
    """

    def __init__(self, velocity_fn: VelocityFn) -> None:
        if not callable(velocity_fn):
            raise TypeError(f"velocity_fn must be callable as velocity_fn(z, s), got {type(velocity_fn).__name__}.")
        self.velocity_fn = velocity_fn
        self.last_nfe: int | None = None

    def sample(
        self,
        z0: torch.Tensor,
        *,
        method: str = "euler",
        steps: int = 16,
        s_span: tuple[float, float] = (0.0, 1.0),
        atol: float = 1e-5,
        rtol: float = 1e-5,
        enable_grad: bool = False,
    ) -> torch.Tensor:
        """Integrate from ``z0`` at ``s_span[0]`` to ``s_span[1]``.

        Parameters
        ----------
        z0
            ``(B, ...)`` initial states.
        method
            ``"euler"`` (1 evaluation per step), ``"heun"`` (2), ``"rk4"`` (4) or the
            adaptive ``"dopri5"``.
        steps
            Number of equal steps for the fixed-step methods (``"dopri5"`` picks its own).
        s_span
            Start and end flow time; ``s_span[1] < s_span[0]`` integrates backwards (e.g.
            from target back to source).
        atol, rtol
            Absolute and relative tolerances of ``"dopri5"``.
        enable_grad
            Keep the autograd graph (e.g. to backpropagate through the sampler); by default the
            solve runs under ``torch.no_grad()``.

        Returns
        -------
        torch.Tensor
            ``(B, ...)`` states at ``s_span[1]``.
        """
        if method not in SOLVER_METHODS:
            raise ValueError(f"Unknown method {method!r}; valid methods are {', '.join(SOLVER_METHODS)}.")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}.")
        s_start, s_end = (float(v) for v in s_span)
        if s_start == s_end:
            raise ValueError(f"s_span must have two different endpoints, got {tuple(s_span)}.")
        if not z0.dtype.is_floating_point:
            raise TypeError(f"z0 must be a floating tensor, got dtype {z0.dtype}.")
        if z0.dim() < 1:
            raise ValueError("z0 needs a batch dimension: expected shape (B, ...), got a scalar.")

        nfe = 0

        def velocity(z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            # Broadcast the scalar time to one per row, as the backbones expect.
            nonlocal nfe
            nfe += 1
            dz = self.velocity_fn(z, s.to(z.dtype).expand(z.shape[0]).contiguous())
            if dz.shape != z.shape:
                raise ValueError(f"velocity_fn returned shape {tuple(dz.shape)} for z of shape {tuple(z.shape)}.")
            return dz

        with torch.set_grad_enabled(enable_grad):
            grid = torch.linspace(s_start, s_end, steps + 1, dtype=z0.dtype, device=z0.device)
            if method == "dopri5":
                out = self._adaptive(velocity, z0, s_start, s_end, atol, rtol)
            else:
                out = self._fixed(_STEPPERS[method], velocity, z0, grid)
        self.last_nfe = nfe
        return out

    @staticmethod
    def _fixed(step_fn, velocity, z0, grid):
        z = z0
        for s, s_next in zip(grid[:-1], grid[1:]):
            z = step_fn(velocity, z, s, s_next - s)
        return z

    @staticmethod
    def _adaptive(velocity, z0, s_start, s_end, atol, rtol):
        from torchdiffeq import odeint

        grid = torch.tensor([s_start, s_end], dtype=z0.dtype, device=z0.device)
        # torchdiffeq calls func(t, y); our convention is velocity_fn(z, s).
        return odeint(lambda s, z: velocity(z, s), z0, grid, method="dopri5", atol=atol, rtol=rtol)[-1]
