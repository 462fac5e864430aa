"""``set_attention``: the state as an unordered set of latent-unit tokens, a transformer with adaLN-Zero."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention

from ..nn import AdaLNZero, TimestepEmbedder, modulate
from ._base import Backbone, EncodedCondition
from ._registry import register_backbone


def _layer_norm(hidden_dim: int) -> nn.LayerNorm:
    # No affine parameters: adaLN supplies shift and scale.
    return nn.LayerNorm(hidden_dim, elementwise_affine=False, eps=1e-6)


def _feed_forward(hidden_dim: int, mlp_ratio: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(hidden_dim, mlp_ratio * hidden_dim),
        nn.GELU(approximate="tanh"),
        nn.Dropout(dropout),
        nn.Linear(mlp_ratio * hidden_dim, hidden_dim),
    )


class _Attention(nn.Module):
    """Multi-head attention of queries ``x`` over ``context`` by ``scaled_dot_product_attention``."""

    def __init__(self, hidden_dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.query = nn.Linear(hidden_dim, hidden_dim)
        self.key_value = nn.Linear(hidden_dim, 2 * hidden_dim)
        self.out = nn.Linear(hidden_dim, hidden_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.n_heads, width // self.n_heads).transpose(1, 2)  # (B, heads, L, H/heads)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, L, H)`` attends to ``context (B, S, H)``; ``key_mask (B, S)`` is ``True`` where a key counts."""
        key, value = self.key_value(context).chunk(2, dim=-1)  # each (B, S, H)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, S)
        attended = scaled_dot_product_attention(
            self._split_heads(self.query(x)),
            self._split_heads(key),
            self._split_heads(value),
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, heads, L, H/heads)
        return self.out(attended.transpose(1, 2).flatten(2))  # (B, L, H)


class _SetBlock(nn.Module):
    """Self-attention over the unit tokens, cross-attention to the perturbation tokens, then an MLP.

    Each sublayer is ``x + gate * sublayer(modulate(LayerNorm(x), shift, scale))`` with its
    own shift, scale and gate from ``c`` (adaLN-Zero: all start at zero, so the block
    starts as the identity).
    """

    def __init__(self, hidden_dim: int, n_heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.self_norm, self.cross_norm, self.mlp_norm = (_layer_norm(hidden_dim) for _ in range(3))
        self.self_attention = _Attention(hidden_dim, n_heads, dropout)
        self.cross_attention = _Attention(hidden_dim, n_heads, dropout)
        self.mlp = _feed_forward(hidden_dim, mlp_ratio, dropout)
        self.modulation = AdaLNZero(hidden_dim, hidden_dim, 9)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, perturbations: torch.Tensor, perturbation_mask: torch.Tensor
    ) -> torch.Tensor:
        """``x (B, D, H)``, ``c (B, H)``, ``perturbations (B, K', H)`` and their mask ``(B, K')`` -> ``(B, D, H)``."""
        self_shift, self_scale, self_gate, cross_shift, cross_scale, cross_gate, mlp_shift, mlp_scale, mlp_gate = (
            self.modulation(c)
        )  # each (B, H)
        h = modulate(self.self_norm(x), self_shift, self_scale)
        x = x + self_gate[:, None] * self.self_attention(h, h)  # (B, D, H)
        h = modulate(self.cross_norm(x), cross_shift, cross_scale)
        x = x + cross_gate[:, None] * self.cross_attention(h, perturbations, perturbation_mask)  # (B, D, H)
        h = modulate(self.mlp_norm(x), mlp_shift, mlp_scale)
        return x + mlp_gate[:, None] * self.mlp(h)  # (B, D, H)


class _FinalLayer(nn.Module):
    """``Linear(modulate(LayerNorm(x), shift, scale))``: each token's hidden vector -> its unit's velocity."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.norm = _layer_norm(hidden_dim)
        self.modulation = AdaLNZero(hidden_dim, hidden_dim, 2)
        self.linear = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c)  # each (B, H)
        return self.linear(modulate(self.norm(x), shift, scale)).squeeze(-1)  # (B, D)


@register_backbone("set_attention")
class SetAttentionBackbone(Backbone):
    """Velocity ``v(z, s, cond)`` with the state as an unordered set of tokens, one per latent unit.

    Token ``i`` is built from a learned identity embedding ``e_i`` of latent unit ``i`` and
    its value ``z_i``; transformer blocks (self-attention, cross-attention to the
    perturbation tokens, MLP) act on the set with no positional encoding, so permuting the
    units together with their identity embeddings permutes the velocity the same way.
    ``c = SiLU(embed(s) + Linear(cond.vector))`` modulates every sublayer (shift, scale
    and gate, adaLN-Zero as in DiT) and the output layer, a linear head shared by all
    tokens. The perturbation tokens ``cond.tokens`` (masked by ``cond.mask``) are seen
    through cross-attention, next to a learned null token that keeps attention defined
    for conditions without tokens (control). Modulation and output layers start at zero,
    so the initial velocity is exactly zero and every block starts as the identity.

    Parameters
    ----------
    dim
        Size ``D`` of the state ``z`` (the number of tokens).
    cond_dim
        Size ``C`` of ``cond.vector`` and of each perturbation token.
    hidden_dim
        Width ``H`` of each token.
    n_blocks
        Number of transformer blocks.
    n_heads
        Attention heads; must divide ``hidden_dim``.
    mlp_ratio
        The block MLP's inner width is ``mlp_ratio * hidden_dim``.
    dropout
        Dropout of attention weights and inside each block's MLP.

    Examples
    --------
    >>> net = SetAttentionBackbone(dim=8, cond_dim=16)
    >>> cond = EncodedCondition(torch.randn(4, 16), torch.randn(4, 2, 16), torch.ones(4, 2, dtype=torch.bool))
    >>> net(torch.randn(4, 8), torch.rand(4), cond).abs().max().item()
    0.0
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        *,
        hidden_dim: int = 64,
        n_blocks: int = 2,
        n_heads: int = 4,
        mlp_ratio: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__(dim, cond_dim)
        if min(dim, cond_dim, hidden_dim, n_heads, mlp_ratio) < 1 or n_blocks < 0:
            raise ValueError(
                f"SetAttentionBackbone needs positive sizes and n_blocks >= 0, got {dim=}, {cond_dim=}, "
                f"{hidden_dim=}, {n_blocks=}, {n_heads=}, {mlp_ratio=}."
            )
        if hidden_dim % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide hidden_dim={hidden_dim}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}.")
        self.hidden_dim = hidden_dim
        # The only per-unit parameters: permuting its rows permutes the units.
        self.unit_embedding = nn.Parameter(torch.empty(dim, hidden_dim))  # (D, H)
        # A token is e_i + MLP([e_i, z_i]) rather than e_i + z_i * w: the value then enters through a
        # nonlinearity jointly with the unit's identity, so each unit can read its own value at its own
        # scale and sign and with its own features (|z_i|, thresholds, ...), which one shared direction
        # w cannot. The first layer on [e_i, z_i] is split into an identity and a value part, so the
        # concatenation is never materialised.
        self.token_identity = nn.Linear(hidden_dim, mlp_ratio * hidden_dim)
        self.token_value = nn.Linear(1, mlp_ratio * hidden_dim, bias=False)
        self.token_out = nn.Linear(mlp_ratio * hidden_dim, hidden_dim)
        self.time_embedder = TimestepEmbedder(hidden_dim)
        self.cond_projection = nn.Linear(cond_dim, hidden_dim)
        self.perturbation_projection = nn.Linear(cond_dim, hidden_dim)
        # Always attendable, so a condition with no tokens (control, padding only) attends to it alone.
        self.null_perturbation = nn.Parameter(torch.empty(hidden_dim))
        self.blocks = nn.ModuleList(_SetBlock(hidden_dim, n_heads, mlp_ratio, dropout) for _ in range(n_blocks))
        self.final_layer = _FinalLayer(hidden_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linear layers; unit-sized embeddings; small time-MLP weights; zero modulation and output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # Latent values are O(1): give them weights as large as the identity's, so neither drowns the other.
        nn.init.normal_(self.token_value.weight, std=1.0)
        nn.init.normal_(self.unit_embedding, std=1.0)
        nn.init.normal_(self.null_perturbation, std=1.0)
        for layer in self.time_embedder.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, AdaLNZero):
                module.reset_parameters()
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def embed_units(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` state -> ``(B, D, H)`` tokens ``e_i + MLP([e_i, z_i])``."""
        hidden = self.token_identity(self.unit_embedding) + self.token_value(z.unsqueeze(-1))  # (B, D, r*H)
        return self.unit_embedding + self.token_out(nn.functional.gelu(hidden, approximate="tanh"))  # (B, D, H)

    def forward(self, z: torch.Tensor, s: torch.Tensor, cond: EncodedCondition) -> torch.Tensor:
        """Velocity at ``z`` (``(B, D)``), flow time ``s`` (``(B,)`` or a scalar) and ``cond``."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"SetAttentionBackbone expects z of shape (B, {self.dim}), got {tuple(z.shape)}.")
        batch = z.shape[0]
        s = torch.as_tensor(s, dtype=z.dtype, device=z.device)
        if s.dim() == 0:
            s = s.expand(batch)  # ODE solvers pass one time for the whole batch
        if s.shape != (batch,):
            raise ValueError(f"s must be a scalar or have shape ({batch},), got {tuple(s.shape)}.")
        if cond.vector.shape != (batch, self.cond_dim):
            raise ValueError(f"cond.vector must have shape ({batch}, {self.cond_dim}), got {tuple(cond.vector.shape)}.")
        if cond.tokens.dim() != 3 or cond.tokens.shape[0] != batch or cond.tokens.shape[2] != self.cond_dim:
            raise ValueError(
                f"cond.tokens must have shape ({batch}, K, {self.cond_dim}), got {tuple(cond.tokens.shape)}."
            )
        if cond.mask.shape != cond.tokens.shape[:2] or cond.mask.dtype != torch.bool:
            raise ValueError(
                f"cond.mask must be a bool tensor of shape {tuple(cond.tokens.shape[:2])}, got {cond.mask.dtype} "
                f"{tuple(cond.mask.shape)}."
            )
        c = nn.functional.silu(self.time_embedder(s) + self.cond_projection(cond.vector))  # (B, H)
        null = self.null_perturbation.to(z.dtype).expand(batch, 1, -1)  # (B, 1, H)
        perturbations = torch.cat([null, self.perturbation_projection(cond.tokens)], dim=1)  # (B, 1 + K, H)
        perturbation_mask = torch.cat([cond.mask.new_ones(batch, 1), cond.mask], dim=1)  # (B, 1 + K)
        x = self.embed_units(z)  # (B, D, H)
        for block in self.blocks:
            x = block(x, c, perturbations, perturbation_mask)  # (B, D, H)
        return self.final_layer(x, c)  # (B, D)
