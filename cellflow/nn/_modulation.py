"""Feature-wise modulation by a conditioning vector (FiLM / adaLN-Zero, as in DiT)."""

from __future__ import annotations

import torch
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift``, one ``shift``/``scale`` per sample.

    Parameters
    ----------
    x
        ``(B, D)`` or ``(B, ..., D)`` (e.g. ``(B, T, D)`` tokens).
    shift, scale
        ``(B, D)``; broadcast over the middle axes of ``x``.

    Returns
    -------
    Tensor shaped like ``x``. Zero ``shift`` and ``scale`` return ``x`` unchanged.
    """
    if shift.shape != scale.shape or shift.dim() != 2:
        raise ValueError(
            f"modulate expects shift and scale of the same shape (B, D), got {tuple(shift.shape)} and "
            f"{tuple(scale.shape)}."
        )
    # (B, D) -> (B, 1, ..., 1, D) so that it broadcasts over the token axes of x.
    view = (shift.shape[0],) + (1,) * (x.dim() - 2) + (shift.shape[1],)
    return x * (1 + scale.view(view)) + shift.view(view)


class AdaLNZero(nn.Module):
    """A linear map ``cond_dim -> n_chunks * dim`` that starts at zero, split into ``n_chunks``.

    Each chunk is one modulation signal (shift, scale, gate, ...). Starting at zero makes
    ``modulate`` the identity and gates closed, so a residual block starts as the identity
    (the adaLN-Zero initialisation of DiT). The conditioning vector is expected to be
    activated already (e.g. ``SiLU(time_embedding + condition)``).

    Parameters
    ----------
    cond_dim
        Size of the conditioning vector.
    dim
        Size of each chunk (the width of the features being modulated).
    n_chunks
        Number of modulation signals.

    Examples
    --------
    >>> shift, scale, gate = AdaLNZero(16, 32, 3)(torch.randn(4, 16))
    >>> shift.shape, bool(gate.abs().sum() == 0)
    (torch.Size([4, 32]), True)
    """

    def __init__(self, cond_dim: int, dim: int, n_chunks: int):
        super().__init__()
        if n_chunks < 1:
            raise ValueError(f"AdaLNZero needs n_chunks >= 1, got {n_chunks}.")
        self.n_chunks = n_chunks
        self.linear = nn.Linear(cond_dim, n_chunks * dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the weights and bias (adaLN-Zero)."""
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, cond_dim)`` -> ``n_chunks`` tensors of shape ``(B, dim)``."""
        return self.linear(cond).chunk(self.n_chunks, dim=-1)
