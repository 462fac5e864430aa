"""Additive latent shifts of single perturbations: where the flow's source cells start.

With ``source_shift="additive"`` the flow does not start from control cells but from
control cells moved by the sum of their tokens' mean latent shifts (scGen-style latent
arithmetic, Lotfollahi et al. 2019). The flow then learns only what arithmetic misses
(interactions between tokens, changes of shape and spread), which is small and
generalises to unseen combinations of seen tokens; a token never measured alone shifts
nothing, and the flow learns its whole effect as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data._conditions import Condition

SOURCE_SHIFTS = ("additive", "none")


@dataclass
class TokenShifts:
    """Mean latent shift per unit dose of every token, by context.

    Attributes
    ----------
    table
        ``(n_contexts, n_tokens, D)``: the shift of token ``t`` in context ``c``. Where ``t``
        was not measured alone in ``c``, its mean over the contexts where it was
        (covariate transfer); zero where it was never measured alone.
    measured
        ``(n_contexts, n_tokens)`` boolean: ``t`` was measured alone in ``c``.
    """

    table: torch.Tensor
    measured: torch.Tensor

    @classmethod
    def from_cells(
        cls,
        latent: np.ndarray,
        conditions: Sequence[Condition],
        context: np.ndarray,
        n_contexts: int,
        tokens: Sequence[str],
    ) -> TokenShifts:
        """Estimate the shifts from training cells.

        Parameters
        ----------
        latent
            ``(N, D)`` latent of every training cell.
        conditions
            Condition of every cell.
        context
            ``(N,)`` context code of every cell.
        n_contexts
            Number of contexts.
        tokens
            The model's token vocabulary (``table``'s second axis follows it).

        Notes
        -----
        ``shift(t, c) = (mean latent of cells with t alone in c - mean latent of control
        cells in c) / mean dose of t there``, so a token at dose ``d`` moves a cell by
        ``d * shift``.
        """
        latent = np.asarray(latent, dtype=np.float64)
        token_id = {t: i for i, t in enumerate(tokens)}
        table = np.zeros((n_contexts, len(tokens), latent.shape[1]))
        measured = np.zeros((n_contexts, len(tokens)), dtype=bool)
        single = np.array([len(c.tokens) == 1 for c in conditions])
        is_control = np.array([c.is_control for c in conditions])
        first_token = np.array([c.tokens[0] if len(c.tokens) == 1 else "" for c in conditions], dtype=object)
        dose = np.array([c.doses[0] if len(c.doses) == 1 else 0.0 for c in conditions])
        for ctx in range(n_contexts):
            in_context = context == ctx
            controls = in_context & is_control
            if not controls.any():
                continue
            control_mean = latent[controls].mean(axis=0)
            for token in np.unique(first_token[in_context & single]):
                rows = in_context & single & (first_token == token)
                mean_dose = dose[rows].mean()
                if token not in token_id or mean_dose == 0:
                    continue
                table[ctx, token_id[token]] = (latent[rows].mean(axis=0) - control_mean) / mean_dose
                measured[ctx, token_id[token]] = True
        # Covariate transfer: a token unmeasured in a context takes its mean shift elsewhere.
        counts = measured.sum(axis=0)  # (n_tokens,)
        elsewhere = table.sum(axis=0) / np.maximum(counts, 1)[:, None]  # (n_tokens, D)
        table = np.where(measured[:, :, None], table, elsewhere[None])
        return cls(torch.as_tensor(table, dtype=torch.float32), torch.as_tensor(measured))

    def __call__(
        self, token_ids: torch.Tensor, doses: torch.Tensor, mask: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """Summed shift ``sum_k dose_k * table[context, token_k]`` of each row (``(B, D)``).

        Parameters
        ----------
        token_ids, doses, mask
            ``(B, K)`` encoded conditions (:meth:`~cellflow.data._codec.ConditionCodec.encode_conditions`).
        context
            ``(B,)`` context codes.
        """
        table = self.table.to(token_ids.device)
        per_token = table[context[:, None], token_ids]  # (B, K, D)
        weight = (doses * mask).to(per_token.dtype)  # padding and dose 0 contribute nothing
        return (weight.unsqueeze(-1) * per_token).sum(dim=1)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to save."""
        return {"table": self.table.contiguous(), "measured": self.measured.contiguous()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> TokenShifts:
        """Rebuild from saved tensors."""
        return cls(tensors["table"], tensors["measured"].bool())
