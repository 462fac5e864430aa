"""Perturbation tokens and an order-invariant encoder of token sets (``"A+B"`` is ``{A, B}``)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

Pooling = Literal["mean", "sum", "attention"]
POOLINGS: tuple[str, ...] = ("mean", "sum", "attention")


class TokenEmbedding(nn.Module):
    """Map integer token ids to vectors: ``(B, K)`` long -> ``(B, K, dim)``.

    Build one with :meth:`learned` (a free vector per token) or :meth:`from_features`
    (a fixed feature table per token, e.g. protein language model vectors or features
    derived from expression, projected by a small MLP). ``from_features(...,
    learned_residual=True)`` adds a learned per-token residual that starts at zero: tokens
    seen in training can refine their feature-based embedding, while an unseen token's
    residual stays zero (it receives no gradient), so its embedding comes from its features
    alone. The plain constructor takes only sizes, so a checkpoint can rebuild the module
    from JSON and then fill the feature table from its state dict.

    Parameters
    ----------
    n_tokens
        Vocabulary size ``V``; ids must lie in ``[0, V)``.
    dim
        Output size.
    feature_dim
        Number of columns ``F`` of the feature table, or ``None`` for no features.
    learned
        Whether to add a learned vector per token (a zero-initialised residual when
        ``feature_dim`` is set).
    hidden_dim
        Hidden width of the feature projection MLP (default: ``dim``).
    """

    def __init__(
        self,
        n_tokens: int,
        dim: int,
        *,
        feature_dim: int | None = None,
        learned: bool = True,
        hidden_dim: int | None = None,
    ):
        super().__init__()
        if n_tokens < 1 or dim < 1:
            raise ValueError(f"TokenEmbedding needs n_tokens >= 1 and dim >= 1, got {n_tokens=}, {dim=}.")
        if feature_dim is None and not learned:
            raise ValueError("TokenEmbedding needs a feature table (feature_dim) or learned=True, or both.")
        self.n_tokens = n_tokens
        self.dim = dim
        self.feature_dim = feature_dim
        self.project: nn.Module | None = None
        if feature_dim is not None:
            hidden_dim = hidden_dim or dim
            # Persistent buffer: the table travels with the checkpoint but is not trained.
            self.register_buffer("features", torch.zeros(n_tokens, feature_dim))
            self.project = nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, dim))
        self.learned_embedding = nn.Embedding(n_tokens, dim) if learned else None
        if learned and feature_dim is not None:
            nn.init.zeros_(self.learned_embedding.weight)  # residual: start from the features alone

    @classmethod
    def learned(cls, n_tokens: int, dim: int) -> TokenEmbedding:
        """A learned vector per token (``nn.Embedding``)."""
        return cls(n_tokens, dim)

    @classmethod
    def from_features(
        cls, features: torch.Tensor, dim: int, *, learned_residual: bool = False, hidden_dim: int | None = None
    ) -> TokenEmbedding:
        """Embed tokens through a fixed ``(V, F)`` feature table (row ``i`` describes token ``i``).

        Each column is standardised (zero mean, unit variance over tokens; a constant
        column becomes zero) and the table is stored as a buffer, then projected by an MLP
        ``F -> hidden_dim -> dim``.
        """
        features = torch.as_tensor(features)
        if features.dim() != 2 or features.shape[0] < 1 or features.shape[1] < 1:
            raise ValueError(f"features must be a non-empty (n_tokens, n_features) table, got {tuple(features.shape)}.")
        if not torch.isfinite(features).all():
            raise ValueError("features contains NaN or infinite values; fill or drop them first.")
        features = features.double()
        std = features.std(dim=0, unbiased=False)
        standardised = (features - features.mean(dim=0)) / torch.where(std > 1e-12, std, torch.ones_like(std))
        module = cls(
            features.shape[0], dim, feature_dim=features.shape[1], learned=learned_residual, hidden_dim=hidden_dim
        )
        module.features.copy_(standardised.float())
        return module

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` integer ids -> ``(B, K, dim)`` embeddings."""
        if token_ids.dtype.is_floating_point or token_ids.dtype == torch.bool:
            raise TypeError(f"token_ids must be an integer tensor, got dtype {token_ids.dtype}.")
        if token_ids.numel() and (token_ids.min() < 0 or token_ids.max() >= self.n_tokens):
            raise ValueError(
                f"token_ids must lie in [0, {self.n_tokens}); got values from {int(token_ids.min())} "
                f"to {int(token_ids.max())}."
            )
        embedding = 0
        if self.project is not None:
            embedding = self.project(self.features[token_ids])  # (B, K, F) -> (B, K, dim)
        if self.learned_embedding is not None:
            embedding = embedding + self.learned_embedding(token_ids)  # (B, K, dim)
        return embedding


def present_tokens(mask: torch.Tensor, doses: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` bool: real tokens with a non-zero dose (a dose of 0 means the token is absent)."""
    return mask & (doses != 0)


class SetEncoder(nn.Module):
    """Encode a padded batch of token sets, invariant to the order of tokens within a set.

    Token ``i`` of a row becomes ``dose_i * embed(id_i)``. Padding and dose-0 tokens are
    absent: they contribute nothing and do not count in the mean, so ``{A: 1, B: 0}``
    encodes exactly as ``{A: 1}``. A row without tokens (the control) pools to zeros.

    Parameters
    ----------
    token_embedding
        Maps ids to vectors of size ``token_embedding.dim``.
    dim
        Output size; a bias-free linear map is added when it differs from the embedding's,
        so that a zero dose still gives a zero token.
    pooling
        ``"mean"`` or ``"sum"`` over present tokens, or ``"attention"``: a learned query
        attends over the present tokens (multi-head), then a linear output map.
    n_heads
        Attention heads (``"attention"`` pooling only); must divide ``dim``.
    """

    def __init__(self, token_embedding: TokenEmbedding, dim: int, pooling: Pooling, *, n_heads: int = 4):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        self.token_embedding = token_embedding
        self.dim = dim
        self.pooling = pooling
        same_size = token_embedding.dim == dim
        self.project = nn.Identity() if same_size else nn.Linear(token_embedding.dim, dim, bias=False)
        self.attention = _AttentionPooling(dim, n_heads) if pooling == "attention" else None

    def forward(
        self, token_ids: torch.Tensor, doses: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool a batch of sets.

        Parameters
        ----------
        token_ids
            ``(B, K)`` integer ids; values at padded positions are ignored.
        doses
            ``(B, K)`` float doses.
        mask
            ``(B, K)`` bool, ``True`` at real tokens.

        Returns
        -------
        pooled : torch.Tensor
            ``(B, dim)``; zeros for rows without present tokens.
        tokens : torch.Tensor
            ``(B, K, dim)`` dose-scaled tokens; zeros where absent.
        """
        _check_set_inputs(token_ids, doses, mask)
        present = present_tokens(mask, doses)  # (B, K)
        safe_ids = token_ids.masked_fill(~present, 0)  # padding ids may be anything, e.g. -1
        weights = (doses * present).unsqueeze(-1)  # (B, K, 1)
        tokens = self.project(self.token_embedding(safe_ids)) * weights  # (B, K, dim)
        if self.pooling == "sum":
            pooled = tokens.sum(dim=1)
        elif self.pooling == "mean":
            pooled = tokens.sum(dim=1) / present.sum(dim=1, keepdim=True).clamp(min=1)
        else:
            pooled = self.attention(tokens, present)
        has_tokens = present.any(dim=1, keepdim=True)  # (B, 1)
        return pooled * has_tokens, tokens  # (B, dim), (B, K, dim)


class _AttentionPooling(nn.Module):
    """A learned query attends over a set of tokens: ``(B, K, D)`` -> ``(B, D)``."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        if n_heads < 1 or dim % n_heads:
            raise ValueError(f"n_heads must divide dim for attention pooling, got {dim=}, {n_heads=}.")
        self.n_heads = n_heads
        self.query = nn.Parameter(0.02 * torch.randn(dim))
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        batch, n_tokens, dim = tokens.shape
        head_dim = dim // self.n_heads
        keys = self.key(tokens).view(batch, n_tokens, self.n_heads, head_dim)  # (B, K, H, d)
        values = self.value(tokens).view(batch, n_tokens, self.n_heads, head_dim)  # (B, K, H, d)
        query = self.query.view(self.n_heads, head_dim)  # (H, d)
        logits = torch.einsum("hd,bkhd->bhk", query, keys) / math.sqrt(head_dim)  # (B, H, K)
        # A finite fill (not -inf) keeps an all-absent row free of NaN, in values and gradients;
        # its uniform weights are then zeroed by the mask.
        logits = logits.masked_fill(~present[:, None, :], torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits, dim=-1) * present[:, None, :]  # (B, H, K)
        pooled = torch.einsum("bhk,bkhd->bhd", weights, values).reshape(batch, dim)  # (B, D)
        return self.out(pooled)


def _check_set_inputs(token_ids: torch.Tensor, doses: torch.Tensor, mask: torch.Tensor) -> None:
    if token_ids.dim() != 2:
        raise ValueError(f"token_ids must have shape (B, K), got {tuple(token_ids.shape)}.")
    if doses.shape != token_ids.shape or mask.shape != token_ids.shape:
        raise ValueError(
            f"token_ids, doses and mask must share one (B, K) shape, got {tuple(token_ids.shape)}, "
            f"{tuple(doses.shape)} and {tuple(mask.shape)}."
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}.")
    if not doses.dtype.is_floating_point:
        raise TypeError(f"doses must be a float tensor, got dtype {doses.dtype}.")
