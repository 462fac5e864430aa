"""Sinusoidal embedding of a scalar time per sample (the DiT ``TimestepEmbedder``)."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_features(
    time: torch.Tensor, frequency_dim: int, *, max_period: float = 10_000.0, scale: float = 1000.0
) -> torch.Tensor:
    """Cosine and sine features of ``scale * time`` at geometrically spaced frequencies.

    Parameters
    ----------
    time
        ``(B,)`` float times.
    frequency_dim
        Number of features; half cosines, half sines (an odd size gets a zero column).
    max_period
        Longest period, in units of ``scale * time``.
    scale
        Multiplies ``time`` first, so that times in ``[0, 1]`` span many periods.

    Returns
    -------
    ``(B, frequency_dim)`` features in ``[-1, 1]``.
    """
    half = frequency_dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=time.device) / half
    )  # (half,), from 1 down to ~1 / max_period
    angles = scale * time.float()[:, None] * frequencies[None]  # (B, half)
    features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (B, 2 * half)
    if frequency_dim % 2:
        features = torch.cat([features, torch.zeros_like(features[:, :1])], dim=-1)
    return features


class TimestepEmbedder(nn.Module):
    """Embed a ``(B,)`` time into ``(B, dim)``: sinusoidal features, then a two-layer MLP.

    Parameters
    ----------
    dim
        Output size.
    frequency_dim
        Number of sinusoidal features fed to the MLP.
    max_period
        Longest sinusoid period, in units of ``scale * time``.
    scale
        Multiplies the time before the sinusoids. The default suits flow time ``s`` in
        ``[0, 1]`` (it spans frequencies as DiT's diffusion steps ``0..1000`` do); for a
        time in other units use ``scale ≈ 1000 / max_time``.

    Examples
    --------
    >>> embed = TimestepEmbedder(64)
    >>> embed(torch.rand(8)).shape
    torch.Size([8, 64])
    """

    def __init__(self, dim: int, frequency_dim: int = 256, max_period: float = 10_000, *, scale: float = 1000.0):
        super().__init__()
        if dim < 1 or frequency_dim < 2:
            raise ValueError(f"TimestepEmbedder needs dim >= 1 and frequency_dim >= 2, got {dim=}, {frequency_dim=}.")
        self.dim = dim
        self.frequency_dim = frequency_dim
        self.max_period = float(max_period)
        self.scale = float(scale)
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        """``(B,)`` time -> ``(B, dim)`` embedding."""
        if time.dim() != 1:
            raise ValueError(f"TimestepEmbedder expects time of shape (B,), got {tuple(time.shape)}.")
        features = sinusoidal_features(time, self.frequency_dim, max_period=self.max_period, scale=self.scale)
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # (B, dim)
