"""``mamba``: a selective state-space (Mamba) stack over experimental time, modulated by flow time and condition."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import AdaLNZero, TimestepEmbedder, modulate
from ..nn._mamba import Mamba
from ._base import Backbone, EncodedCondition
from ._mlp import _FinalLayer  # the same adaLN-Zero output layer; modulate broadcasts over time points
from ._registry import register_backbone


class _MambaBlock(nn.Module):
    """``x + gate * Mamba(modulate(LayerNorm(x), shift, scale))`` over the time axis, the signals from ``c``."""

    def __init__(self, hidden_dim: int, d_state: int, d_conv: int, expand: int, bidirectional: bool):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim, elementwise_affine=False, eps=1e-6)
        self.mamba = Mamba(hidden_dim, d_state=d_state, d_conv=d_conv, expand=expand)
        # A second scan reads the trajectory from its end, so every time point also sees later ones.
        self.mamba_reversed = (
            Mamba(hidden_dim, d_state=d_state, d_conv=d_conv, expand=expand) if bidirectional else None
        )
        self.modulation = AdaLNZero(hidden_dim, hidden_dim, 3)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c)  # each (B, H)
        h = modulate(self.norm(x), shift, scale)  # (B, T, H)
        mixed = self.mamba(h)  # (B, T, H)
        if self.mamba_reversed is not None:
            mixed = mixed + self.mamba_reversed(h.flip(1)).flip(1)
        return x + gate[:, None] * mixed  # (B, T, H)


@register_backbone("mamba")
class MambaBackbone(Backbone):
    """Velocity ``v(z, s, cond)`` of a time course: Mamba blocks over the experimental time points.

    Each row of ``z`` is one trajectory, ``(T, D)``: the latent state at ``T`` experimental time
    points. Token ``t`` is ``Linear(z[:, t]) + embed(times[:, t])``; residual Mamba blocks mix
    the tokens along time, and ``c = SiLU(embed(s) + Linear(cond.vector))`` modulates every
    block (shift, scale and gate of an adaLN-Zero block) and the output layer. Modulation and
    output layers start at zero, so the initial velocity is exactly zero and every block starts
    as the identity.

    A Mamba scan is causal: the velocity at time point ``t`` sees time points ``<= t`` only, the
    natural reading of a time course. The flow, though, moves the whole trajectory at once, and
    where the state at an early time point is better told by later ones (a response that only
    shows late, a noisy early sample), ``bidirectional=True`` adds a second Mamba over the
    reversed sequence (outputs summed) so every time point sees the whole course.

    Parameters
    ----------
    dim
        Size ``D`` of the state at one time point.
    cond_dim
        Size ``C`` of ``cond.vector``.
    hidden_dim
        Width ``H`` of the residual stream (the Mamba ``d_model``).
    n_blocks
        Number of residual Mamba blocks.
    d_state, d_conv, expand
        Mamba state size, causal convolution width and inner expansion (``d_inner = expand * H``).
    bidirectional
        Add a Mamba over the reversed time axis in every block.

    Examples
    --------
    >>> net = MambaBackbone(dim=8, cond_dim=16, hidden_dim=32)
    >>> cond = EncodedCondition(torch.randn(4, 16), torch.zeros(4, 0, 16), torch.zeros(4, 0, dtype=torch.bool))
    >>> times = torch.linspace(0, 1, 5)
    >>> velocity = net(torch.randn(4, 5, 8), torch.rand(4), cond, times)
    >>> velocity.shape, velocity.abs().max().item()
    (torch.Size([4, 5, 8]), 0.0)
    """

    over_time = True

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        *,
        hidden_dim: int = 128,
        n_blocks: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        bidirectional: bool = False,
    ):
        super().__init__(dim, cond_dim)
        if min(dim, cond_dim, hidden_dim, d_state, d_conv, expand) < 1 or n_blocks < 0:
            raise ValueError(
                f"MambaBackbone needs positive sizes and n_blocks >= 0, got {dim=}, {cond_dim=}, {hidden_dim=}, "
                f"{n_blocks=}, {d_state=}, {d_conv=}, {expand=}."
            )
        if not isinstance(bidirectional, bool):
            raise TypeError(f"bidirectional must be True or False, got {bidirectional!r}.")
        self.hidden_dim = hidden_dim
        self.bidirectional = bidirectional
        self.input_layer = nn.Linear(dim, hidden_dim)
        self.time_point_embedder = TimestepEmbedder(hidden_dim)  # experimental time, scaled to about [0, 1]
        self.time_embedder = TimestepEmbedder(hidden_dim)  # flow time s
        self.cond_projection = nn.Linear(cond_dim, hidden_dim)
        self.blocks = nn.ModuleList(
            _MambaBlock(hidden_dim, d_state, d_conv, expand, bidirectional) for _ in range(n_blocks)
        )
        self.final_layer = _FinalLayer(hidden_dim, dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier input and condition layers; small time-MLP weights; zero modulation and output layers.

        The Mamba layers keep mamba-ssm's own initialisation (notably the ``dt_proj`` bias).
        """
        for layer in (self.input_layer, self.cond_projection):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        for embedder in (self.time_point_embedder, self.time_embedder):
            for layer in embedder.mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
                    nn.init.zeros_(layer.bias)
        for module in self.modules():
            if isinstance(module, AdaLNZero):
                module.reset_parameters()
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(
        self, z: torch.Tensor, s: torch.Tensor, cond: EncodedCondition, times: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Velocity at ``z`` (``(B, T, D)``), flow time ``s`` (``(B,)`` or a scalar) and ``cond``.

        ``times`` are the experimental times of the ``T`` points, ``(T,)`` shared or ``(B, T)``
        per trajectory, scaled to about ``[0, 1]``; ``None`` leaves position to the order alone.
        Returns the velocity, ``(B, T, D)``.
        """
        if z.dim() != 3 or z.shape[2] != self.dim or z.shape[1] < 1:
            raise ValueError(f"MambaBackbone expects z of shape (B, T, {self.dim}) with T >= 1, got {tuple(z.shape)}.")
        batch, n_times = z.shape[:2]
        s = torch.as_tensor(s, dtype=z.dtype, device=z.device)
        if s.dim() == 0:
            s = s.expand(batch)  # ODE solvers pass one time for the whole batch
        if s.shape != (batch,):
            raise ValueError(f"s must be a scalar or have shape ({batch},), got {tuple(s.shape)}.")
        if cond.vector.shape != (batch, self.cond_dim):
            raise ValueError(f"cond.vector must have shape ({batch}, {self.cond_dim}), got {tuple(cond.vector.shape)}.")
        c = nn.functional.silu(self.time_embedder(s) + self.cond_projection(cond.vector))  # (B, H)
        x = self.input_layer(z)  # (B, T, H)
        if times is not None:
            times = torch.as_tensor(times, dtype=z.dtype, device=z.device)
            if times.shape == (n_times,):
                times = times.expand(batch, n_times)
            if times.shape != (batch, n_times):
                raise ValueError(
                    f"times must have shape ({n_times},) or ({batch}, {n_times}) to match z, got {tuple(times.shape)}."
                )
            x = x + self.time_point_embedder(times.reshape(-1)).view(batch, n_times, self.hidden_dim)
        for block in self.blocks:
            x = block(x, c)  # (B, T, H)
        return self.final_layer(x, c)  # (B, T, D)
