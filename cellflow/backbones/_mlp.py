"""``mlp``: residual MLP blocks modulated by flow time and condition (adaLN-Zero, as in DiT)."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import AdaLNZero, TimestepEmbedder, modulate
from ._base import Backbone, EncodedCondition
from ._registry import register_backbone


class _ResidualBlock(nn.Module):
    """``x + gate * MLP(modulate(LayerNorm(x), shift, scale))``, all three signals from ``c``."""

    def __init__(self, hidden_dim: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_dim, mlp_ratio * hidden_dim),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
            nn.Linear(mlp_ratio * hidden_dim, hidden_dim),
        )
        self.modulation = AdaLNZero(hidden_dim, hidden_dim, 3)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c)  # each (B, H)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))  # (B, H)


class _FinalLayer(nn.Module):
    """``Linear(modulate(LayerNorm(x), shift, scale))``: hidden -> state size."""

    def __init__(self, hidden_dim: int, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim, elementwise_affine=False, eps=1e-6)
        self.modulation = AdaLNZero(hidden_dim, hidden_dim, 2)
        self.linear = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c)  # each (B, H)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, D)


@register_backbone("mlp")
class MLPBackbone(Backbone):
    """Velocity ``v(z, s, cond)`` of a plain-vector state by residual MLP blocks.

    ``c = SiLU(embed(s) + Linear(cond.vector))`` modulates every block (shift, scale and
    gate of an adaLN-Zero residual block) and the output layer. Modulation and output
    layers start at zero, so the initial velocity is exactly zero and every block starts
    as the identity.

    Parameters
    ----------
    dim
        Size ``D`` of the state ``z``.
    cond_dim
        Size ``C`` of ``cond.vector``.
    hidden_dim
        Width ``H`` of the residual stream.
    n_blocks
        Number of residual blocks.
    dropout
        Dropout inside each block's MLP.
    mlp_ratio
        The block MLP's inner width is ``mlp_ratio * hidden_dim``.

    Examples
    --------
    >>> net = MLPBackbone(dim=8, cond_dim=16)
    >>> cond = EncodedCondition(torch.randn(4, 16), torch.zeros(4, 0, 16), torch.zeros(4, 0, dtype=torch.bool))
    >>> net(torch.randn(4, 8), torch.rand(4), cond).abs().max().item()
    0.0

    One condition (batch 1) and a scalar ``s`` broadcast over all rows of ``z``, so the
    modulation is computed once (what generation does).
    """

    broadcasts_condition = True

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        *,
        hidden_dim: int = 256,
        n_blocks: int = 4,
        dropout: float = 0.0,
        mlp_ratio: int = 2,
    ):
        super().__init__(dim, cond_dim)
        if min(dim, cond_dim, hidden_dim, mlp_ratio) < 1 or n_blocks < 0:
            raise ValueError(
                f"MLPBackbone needs positive sizes and n_blocks >= 0, got {dim=}, {cond_dim=}, {hidden_dim=}, "
                f"{n_blocks=}, {mlp_ratio=}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}.")
        self.hidden_dim = hidden_dim
        self.input_layer = nn.Linear(dim, hidden_dim)
        self.time_embedder = TimestepEmbedder(hidden_dim)
        self.cond_projection = nn.Linear(cond_dim, hidden_dim)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden_dim, mlp_ratio, dropout) for _ in range(n_blocks))
        self.final_layer = _FinalLayer(hidden_dim, dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linear layers; small time-MLP weights; zero modulation and output layers."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in self.time_embedder.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, AdaLNZero):
                module.reset_parameters()
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, z: torch.Tensor, s: torch.Tensor, cond: EncodedCondition) -> torch.Tensor:
        """Velocity at ``z`` (``(B, D)``), flow time ``s`` (``(B,)`` or a scalar) and ``cond``."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"MLPBackbone expects z of shape (B, {self.dim}), got {tuple(z.shape)}.")
        batch = z.shape[0]
        s = torch.as_tensor(s, dtype=z.dtype, device=z.device)
        # One condition and one time for the whole batch: modulate once, broadcast over rows.
        shared = cond.vector.shape[0] == 1 and s.numel() == 1
        rows = 1 if shared else batch
        s = s.reshape(-1).expand(rows) if s.numel() == 1 else s
        if s.shape != (rows,):
            raise ValueError(f"s must be a scalar or have shape ({batch},), got {tuple(s.shape)}.")
        if cond.vector.shape != (rows, self.cond_dim):
            raise ValueError(f"cond.vector must have shape ({batch}, {self.cond_dim}), got {tuple(cond.vector.shape)}.")
        c = nn.functional.silu(self.time_embedder(s) + self.cond_projection(cond.vector))  # (B or 1, H)
        x = self.input_layer(z)  # (B, H)
        for block in self.blocks:
            x = block(x, c)  # (B, H)
        return self.final_layer(x, c)  # (B, D)
