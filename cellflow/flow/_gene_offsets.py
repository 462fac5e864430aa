"""Gene offsets: what a condition does to single genes' expected counts that its latent does not carry.

The decoder maps a low-dimensional latent to every gene's expected counts, so the decoded mean
of a condition's cells misses part of its effect on single genes, and is biased even on control
cells. Each condition of the training cells gets a per-gene correction of the decoder's
expected counts on the log scale; an unseen combination takes the control cells' correction
plus the sum of its tokens' changes of it, as its latent shift is the sum of its tokens'
(optionally times a factor chosen on the training combinations whose tokens were measured alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._token_shift import TokenShifts


@dataclass
class GeneOffsets:
    """Log-scale corrections of the decoder's expected counts of every gene, by condition and context.

    A group of training cells (a condition in a context; over time, at a time point) has the
    offset ``log((observed + a) / (expected + a))`` for each gene: its cells' summed counts
    against the decoder's expected counts of the same cells (at posterior draws, with their own
    library sizes), shrunk towards no correction by the prior strength ``a`` (a Gamma(a, a)
    prior on the multiplicative correction, in counts summed over the group). A condition is
    offset by ``control[row] + shifts(condition)``: :class:`TokenShifts` of the offsets, so a
    measured condition gets its own offset and an unseen combination the control cells' plus
    the sum of its tokens' changes (times ``shifts.combination_scale``).

    Attributes
    ----------
    control
        ``(n_rows, n_genes)``: the offset of the control cells of each row of the shifts' table
        (a context, or over time a context at a time point).
    shifts
        Token shifts of the offsets (``D = n_genes``) relative to the control cells.
    prior_strength
        The ``a`` the offsets were estimated with.
    """

    control: torch.Tensor
    shifts: TokenShifts
    prior_strength: float

    def __call__(
        self, token_ids: torch.Tensor, doses: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """Offsets ``(B, n_genes)`` of encoded conditions in rows ``rows`` of the table (as :class:`TokenShifts`)."""
        return self.control.to(token_ids.device)[rows] + self.shifts(token_ids, doses, mask, rows)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to save."""
        out = {f"shifts.{k}": v for k, v in self.shifts.tensors().items()}
        return out | {"control": self.control.contiguous(), "prior_strength": torch.tensor(self.prior_strength)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> GeneOffsets:
        """Rebuild from saved tensors."""
        shifts = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("shifts.")}
        return cls(tensors["control"], TokenShifts.from_tensors(shifts), float(tensors["prior_strength"]))
