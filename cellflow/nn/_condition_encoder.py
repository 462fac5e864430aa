"""Merge the perturbation set, covariates and experimental time into one condition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ._set_encoder import Pooling, SetEncoder, TokenEmbedding, present_tokens
from ._time_embedding import TimestepEmbedder


class EncodedCondition(NamedTuple):
    """A batch of conditions, as the backbones see them.

    Attributes
    ----------
    vector
        ``(B, C)`` pooled condition: the perturbation set, covariates and (where used)
        experimental time, merged into one vector.
    tokens
        ``(B, K, C)`` the individual (dose-scaled) perturbation token embeddings, for
        backbones that attend to them (``set_attention``); padded to the longest set.
    mask
        ``(B, K)`` boolean, ``True`` where ``tokens`` holds a real token.
    """

    vector: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor


class ConditionEncoder(nn.Module):
    """Encode a batch of conditions into an :class:`~cellflow.backbones.EncodedCondition`.

    ``vector = MLP([pooled set, covariate embeddings..., time embedding])``. Rows flagged in
    ``drop`` get a learned null condition instead (the whole condition, covariates
    included, and no tokens), which trains the unconditional velocity used by
    classifier-free guidance (DiT's ``LabelEmbedder`` with its extra null class).

    Parameters
    ----------
    token_embedding
        Embeds perturbation token ids.
    cond_dim
        Size ``C`` of the condition vector and of each token.
    covariate_cardinalities
        Number of categories of each covariate (cell type, batch, ...), in column order.
    use_time
        Whether the condition includes an experimental time.
    pooling
        How the set encoder pools tokens: ``"mean"``, ``"sum"`` or ``"attention"``.
    time_scale
        Multiplies experimental time before its sinusoidal features. The default suits
        times in ``[0, 1]`` (e.g. divided by the longest time); otherwise use
        ``1000 / max_time``.
    """

    def __init__(
        self,
        token_embedding: TokenEmbedding,
        cond_dim: int,
        covariate_cardinalities: Sequence[int] = (),
        use_time: bool = False,
        *,
        pooling: Pooling,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        cardinalities = [int(n) for n in covariate_cardinalities]
        if any(n < 1 for n in cardinalities):
            raise ValueError(f"covariate_cardinalities must all be >= 1, got {cardinalities}.")
        self.cond_dim = cond_dim
        self.covariate_cardinalities = cardinalities
        self.use_time = use_time
        self.set_encoder = SetEncoder(token_embedding, cond_dim, pooling)
        self.covariate_embeddings = nn.ModuleList(nn.Embedding(n, cond_dim) for n in cardinalities)
        self.time_embedder = TimestepEmbedder(cond_dim, scale=time_scale) if use_time else None
        n_parts = 1 + len(cardinalities) + int(use_time)
        self.merge = nn.Sequential(nn.Linear(n_parts * cond_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.null_vector = nn.Parameter(0.02 * torch.randn(cond_dim))

    def forward(
        self,
        token_ids: torch.Tensor,
        doses: torch.Tensor,
        mask: torch.Tensor,
        covariates: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> EncodedCondition:
        """Encode conditions.

        Parameters
        ----------
        token_ids, doses, mask
            ``(B, K)`` perturbation tokens, as for :class:`~cellflow.nn.SetEncoder`.
        covariates
            ``(B, n_covariates)`` integer categories, or ``None`` when there are no covariates.
        time
            ``(B,)`` experimental time; required when ``use_time``.
        drop
            ``(B,)`` bool, ``True`` where the condition is replaced by the null condition.

        Returns
        -------
        EncodedCondition
            ``vector (B, C)``, ``tokens (B, K, C)`` and ``mask (B, K)`` (present tokens only:
            padding, dose-0 tokens and dropped rows are ``False``).
        """
        batch = token_ids.shape[0]
        pooled, tokens = self.set_encoder(token_ids, doses, mask)  # (B, C), (B, K, C)
        parts = [pooled]
        parts += self._embed_covariates(covariates, batch)  # each (B, C)
        if self.time_embedder is not None:
            if time is None or time.shape != (batch,):
                got = None if time is None else tuple(time.shape)
                raise ValueError(f"use_time=True needs time of shape ({batch},), got {got}.")
            parts.append(self.time_embedder(time))  # (B, C)
        vector = self.merge(torch.cat(parts, dim=-1))  # (B, C)
        present = present_tokens(mask, doses)  # (B, K)
        if drop is not None:
            if drop.shape != (batch,) or drop.dtype != torch.bool:
                raise ValueError(
                    f"drop must be a bool tensor of shape ({batch},), got {drop.dtype} {tuple(drop.shape)}."
                )
            vector = torch.where(drop[:, None], self.null_vector.to(vector.dtype).expand_as(vector), vector)
            present = present & ~drop[:, None]
            tokens = tokens * present.unsqueeze(-1)
        return EncodedCondition(vector=vector, tokens=tokens, mask=present)

    def _embed_covariates(self, covariates: torch.Tensor | None, batch: int) -> list[torch.Tensor]:
        n_covariates = len(self.covariate_embeddings)
        if n_covariates == 0:
            if covariates is not None and covariates.numel():
                raise ValueError(
                    f"Got covariates of shape {tuple(covariates.shape)}, but the encoder was built with none; "
                    "pass covariate_cardinalities."
                )
            return []
        if covariates is None or covariates.shape != (batch, n_covariates):
            got = None if covariates is None else tuple(covariates.shape)
            raise ValueError(f"covariates must have shape ({batch}, {n_covariates}), got {got}.")
        if covariates.dtype.is_floating_point or covariates.dtype == torch.bool:
            raise TypeError(f"covariates must be an integer tensor, got dtype {covariates.dtype}.")
        embedded = []
        for column, (embedding, n_categories) in enumerate(
            zip(self.covariate_embeddings, self.covariate_cardinalities)
        ):
            codes = covariates[:, column]
            if batch and (codes.min() < 0 or codes.max() >= n_categories):
                raise ValueError(
                    f"covariates[:, {column}] must lie in [0, {n_categories}); got {int(codes.min())} "
                    f"to {int(codes.max())}."
                )
            embedded.append(embedding(codes))  # (B, C)
        return embedded
