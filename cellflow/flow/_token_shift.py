"""Token shifts: scGen-style latent arithmetic, the coordinates the flow runs relative to.

A condition's shift is the dose-weighted sum of its tokens' mean latent shifts (Lotfollahi et
al. 2019), or, with ``mode="measured"``, a measured condition's own mean shift. The flow module
subtracts it from the training targets and adds it back after the ODE, so the velocity field
learns only what arithmetic misses (interactions between tokens, changes of shape and spread),
which is small and generalises to unseen combinations of seen tokens. A token never measured
alone takes its shift from combinations with tokens that were (``shift(A+B) - shift(B)``). A
token with neither (an unseen perturbation, or one measured only in combinations with other
such tokens) takes the shift its features predict, when the tokens have features
(:class:`~cellflow.flow._feature_shifts.FeatureRegression`: ridge regression on the other tokens'
shifts, or their mean); without features it shifts nothing, and the flow learns its whole effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..pp._conditions import Condition
from ._feature_shifts import FeatureRegression


@dataclass
class TokenShifts:
    """Mean latent shift per unit dose of every token, by context.

    Attributes
    ----------
    table
        ``(n_contexts, n_tokens, D)``: the shift of token ``t`` in context ``c``. Where ``t``
        was not measured alone in ``c``, its mean over the contexts where it was
        (covariate transfer). A token never measured alone takes its shift from the
        combinations it was measured in whose other tokens were measured alone
        (``shift(A+B) - shift(B)``, averaged; then transferred across contexts likewise).
        A token with no shift of either kind takes the one its features predict in each
        context, given ``features``; zero without them.
    measured
        ``(n_contexts, n_tokens)`` boolean: ``t`` was measured alone in ``c``.
    condition_ids, condition_doses, condition_context, condition_shift
        With ``mode="measured"``: every measured condition (``(M, K)`` sorted token ids and
        doses, padded with -1 and 0), its context and its own mean latent shift ``(M, D)``,
        used instead of the sum of singles wherever a query matches one exactly.
    combination_scale
        Factor on the summed shift of a query of several tokens at non-zero doses that matches
        no measured condition (1: plain arithmetic; with ``mode="additive"`` nothing is matched,
        so training combinations are scaled too). Gene offsets can choose it on the training
        combinations (``combination_offsets="fit"``,
        :func:`~cellflow.train.choose_combination_scale`); latent shifts keep 1.
    """

    table: torch.Tensor
    measured: torch.Tensor
    condition_ids: torch.Tensor | None = None
    condition_doses: torch.Tensor | None = None
    condition_context: torch.Tensor | None = None
    condition_shift: torch.Tensor | None = None
    combination_scale: float = 1.0

    @classmethod
    def from_cells(
        cls,
        latent: np.ndarray,
        conditions: Sequence[Condition],
        context: np.ndarray,
        n_contexts: int,
        tokens: Sequence[str],
        mode: str = "additive",
        features: np.ndarray | None = None,
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
        mode
            ``"additive"``: every condition is shifted by the dose-weighted sum of its
            tokens' shifts. ``"measured"``: a condition measured in training (same tokens,
            doses and context) is shifted by its own mean shift; only unmeasured ones by
            the sum. The flow then learns no mean change for any training group, and the
            mean of an unseen combination is exactly latent arithmetic.
        features
            ``(n_tokens, F)`` feature rows of the vocabulary (the model's token embedding
            table), or ``None``. With them, the shift of a token without one of its own (not
            measured alone in any context, nor derivable from a combination with tokens that
            were) is predicted from its features
            (:class:`~cellflow.flow._feature_shifts.FeatureRegression`).

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
        table = _transfer_across_contexts(table, measured)
        derived = _shifts_from_combinations(latent, conditions, context, is_control, token_id, table, measured)
        table = np.where(derived[1][:, :, None], derived[0], table)
        if features is not None:  # one decomposition of the known tokens' features serves every context
            regression = FeatureRegression(features, measured.any(axis=0) | derived[1].any(axis=0))
            for ctx in range(n_contexts):
                table[ctx] = regression.predict(table[ctx])[0]
        shifts = cls(torch.as_tensor(table, dtype=torch.float32), torch.as_tensor(measured))
        if mode == "measured":
            shifts._add_measured_conditions(latent, conditions, context, token_id)
        elif mode != "additive":
            raise ValueError(f"mode={mode!r} must be 'additive' or 'measured'.")
        return shifts

    def _add_measured_conditions(self, latent, conditions, context, token_id) -> None:
        keys = [(c.tokens, c.doses, int(ctx)) for c, ctx in zip(conditions, context)]
        codes, uniques = pd.factorize(pd.Series(keys, dtype=object))
        width = max(1, max(len(t) for t, _, _ in uniques))
        ids = np.full((len(uniques), width), -1, dtype=np.int64)
        doses = np.zeros((len(uniques), width))
        ctx = np.array([c for _, _, c in uniques], dtype=np.int64)
        means = np.stack([latent[codes == i].mean(axis=0) for i in range(len(uniques))])
        control = {c: means[i] for i, (t, _, c) in enumerate(uniques) if not t}
        keep = []
        for i, (toks, dose, c) in enumerate(uniques):
            if not toks or c not in control or any(t not in token_id for t in toks):
                continue
            ids[i, : len(toks)] = [token_id[t] for t in toks]
            doses[i, : len(toks)] = dose
            keep.append(i)
        keep = np.array(keep, dtype=np.int64)
        self.condition_ids = torch.as_tensor(ids[keep])
        self.condition_doses = torch.as_tensor(doses[keep], dtype=torch.float32)
        self.condition_context = torch.as_tensor(ctx[keep])
        shift = np.stack([means[i] - control[ctx[i]] for i in keep]) if len(keep) else np.zeros((0, latent.shape[1]))
        self.condition_shift = torch.as_tensor(shift, dtype=torch.float32)

    def __call__(
        self, token_ids: torch.Tensor, doses: torch.Tensor, mask: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """Summed shift ``sum_k dose_k * table[context, token_k]`` of each row (``(B, D)``).

        Parameters
        ----------
        token_ids, doses, mask
            ``(B, K)`` encoded conditions (:meth:`~cellflow.pp._codec.ConditionCodec.encode_conditions`).
        context
            ``(B,)`` context codes.
        """
        table = self.table.to(token_ids.device)
        per_token = table[context[:, None], token_ids]  # (B, K, D)
        weight = (doses * mask).to(per_token.dtype)  # padding and dose 0 contribute nothing
        shift = (weight.unsqueeze(-1) * per_token).sum(dim=1)
        if self.combination_scale != 1.0:
            several = (weight != 0).sum(dim=1) > 1
            shift = torch.where(several[:, None], shift * self.combination_scale, shift)
        if self.condition_shift is None or len(self.condition_shift) == 0:
            return shift
        match = self._match(token_ids, doses, mask, context)  # (B,) row of a measured condition, or -1
        found = match >= 0
        shift[found] = self.condition_shift.to(shift.device)[match[found]]
        return shift

    def _match(self, token_ids, doses, mask, context) -> torch.Tensor:
        """Index of the measured condition equal to each query row (same tokens, doses, context), else -1."""
        width = self.condition_ids.shape[1]
        batch, k = token_ids.shape
        present = mask & (doses != 0)
        ids = torch.where(present, token_ids, torch.full_like(token_ids, -1))
        dose = torch.where(present, doses, torch.zeros_like(doses))
        # Sort each row so that padding goes last, as in the stored table.
        order = torch.argsort(torch.where(ids < 0, torch.full_like(ids, 2**62), ids), dim=1, stable=True)
        ids, dose = ids.gather(1, order), dose.gather(1, order)
        # A query with more tokens than any measured condition matches none of them.
        device = token_ids.device
        extra = (ids[:, width:] >= 0).any(dim=1) if k > width else torch.zeros(batch, dtype=torch.bool, device=device)
        if k > width:
            ids, dose = ids[:, :width], dose[:, :width]
        else:
            ids = torch.cat([ids, ids.new_full((batch, width - k), -1)], dim=1)
            dose = torch.cat([dose, dose.new_zeros((batch, width - k))], dim=1)
        measured = [t.to(device) for t in (self.condition_ids, self.condition_doses, self.condition_context)]
        equal = (
            (ids[:, None] == measured[0][None]).all(-1)
            & torch.isclose(dose[:, None], measured[1][None]).all(-1)
            & (context[:, None] == measured[2][None])
            & ~extra[:, None]
        )  # (B, M)
        hit = equal.any(dim=1)
        missing = torch.full((batch,), -1, dtype=torch.long, device=device)
        return torch.where(hit, equal.float().argmax(dim=1), missing)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to save."""
        out = {"table": self.table.contiguous(), "measured": self.measured.contiguous()}
        if self.condition_shift is not None:
            for name in ("condition_ids", "condition_doses", "condition_context", "condition_shift"):
                out[name] = getattr(self, name).contiguous()
        if self.combination_scale != 1.0:  # absent (1) in checkpoints written before it existed
            out["combination_scale"] = torch.tensor(self.combination_scale)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> TokenShifts:
        """Rebuild from saved tensors."""
        extra = [tensors.get(n) for n in ("condition_ids", "condition_doses", "condition_context", "condition_shift")]
        scale = float(tensors["combination_scale"]) if "combination_scale" in tensors else 1.0
        return cls(tensors["table"], tensors["measured"].bool(), *extra, combination_scale=scale)


def _transfer_across_contexts(table: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Covariate transfer: a token unknown in a context takes its mean shift over the contexts where it is known."""
    counts = known.sum(axis=0)  # (n_tokens,)
    elsewhere = (table * known[:, :, None]).sum(axis=0) / np.maximum(counts, 1)[:, None]  # (n_tokens, D)
    return np.where(known[:, :, None], table, elsewhere[None])


def _shifts_from_combinations(latent, conditions, context, is_control, token_id, table, measured):
    """Shifts of tokens never measured alone, from combinations whose other tokens were measured alone.

    For a combination ``c`` containing token ``A`` (dose ``d_A``) whose other tokens all have a
    single-perturbation shift: ``(shift(c) - sum_t d_t shift(t)) / d_A``, averaged over such
    combinations in each context, then transferred to the other contexts. Returns the table
    of these shifts and where they are defined (``(n_contexts, n_tokens)``; False for tokens
    measured alone, which keep their own shift).
    """
    n_contexts, n_tokens, _ = table.shape
    alone_somewhere = measured.any(axis=0)
    sums, counts = np.zeros_like(table), np.zeros((n_contexts, n_tokens))
    keys = [(c.tokens, c.doses, int(ctx)) if len(c.tokens) > 1 else None for c, ctx in zip(conditions, context)]
    codes, combos = pd.factorize(pd.Series(keys, dtype=object))  # single tokens and controls: code -1
    for code, (tokens, doses, ctx) in enumerate(combos):
        unknown = [i for i, t in enumerate(tokens) if t in token_id and not alone_somewhere[token_id[t]]]
        if len(unknown) != 1 or any(t not in token_id for t in tokens) or doses[unknown[0]] == 0:
            continue  # identifiable only with exactly one token lacking a single-perturbation shift
        controls = (context == ctx) & is_control
        if not controls.any():
            continue
        shift = latent[codes == code].mean(axis=0) - latent[controls].mean(axis=0)
        (a,) = unknown
        known = sum(d * table[ctx, token_id[t]] for i, (t, d) in enumerate(zip(tokens, doses)) if i != a)
        sums[ctx, token_id[tokens[a]]] += (shift - known) / doses[a]
        counts[ctx, token_id[tokens[a]]] += 1
    defined = counts > 0
    transferred = _transfer_across_contexts(sums / np.maximum(counts, 1)[:, :, None], defined)
    return transferred, np.broadcast_to(defined.any(axis=0) & ~alone_somewhere, (n_contexts, n_tokens))


def time_resolved_shifts(
    latent: np.ndarray,
    conditions: Sequence[Condition],
    context: np.ndarray,
    time_code: np.ndarray,
    n_contexts: int,
    n_times: int,
    tokens: Sequence[str],
    features: np.ndarray | None = None,
) -> TokenShifts:
    """Additive token shifts measured separately at every time point (``source_shift="additive"`` over time).

    A perturbation's effect grows after it is applied, so one shift pooled over time would
    start early time points too far and late ones too near. Row ``c * T + k`` of the table is
    the shift in context ``c`` at time point ``k``, estimated by :meth:`TokenShifts.from_cells`
    on the cells of time point ``k`` alone: the mean latent of the token alone there minus the
    mean latent of the control cells there; a token unmeasured alone in context ``c`` takes its
    mean shift over the other contexts at the same time point, a token never measured alone
    at that time point its shift from the combinations measured then, and one measured nowhere
    at that time point the shift its ``features`` predict, given them.

    Parameters
    ----------
    latent
        ``(N, D)`` values of every cell (latents, log library sizes, or per-group values).
    conditions, context, time_code
        Condition, context code and time point of every row.
    n_contexts, n_times
        Numbers of contexts and time points.
    tokens
        The model's token vocabulary.
    features
        ``(n_tokens, F)`` token features, or ``None`` (see :meth:`TokenShifts.from_cells`).

    Returns
    -------
    TokenShifts
        ``table`` of shape ``(n_contexts * n_times, n_tokens, D)``; index it with
        ``context * n_times + time point``.
    """
    latent = np.asarray(latent)
    context, time_code = np.asarray(context, dtype=np.int64), np.asarray(time_code, dtype=np.int64)
    table = np.zeros((n_contexts, n_times, len(tokens), latent.shape[1]), dtype=np.float32)
    measured = np.zeros((n_contexts, n_times, len(tokens)), dtype=bool)
    for k in range(n_times):
        cells = np.flatnonzero(time_code == k)
        at_k = TokenShifts.from_cells(
            latent[cells], [conditions[i] for i in cells], context[cells], n_contexts, tokens, features=features
        )
        table[:, k], measured[:, k] = at_k.table.numpy(), at_k.measured.numpy()
    return TokenShifts(
        torch.as_tensor(table.reshape(n_contexts * n_times, len(tokens), -1)),
        torch.as_tensor(measured.reshape(n_contexts * n_times, len(tokens))),
    )
