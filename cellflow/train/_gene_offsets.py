"""Estimating gene offsets from the training cells (:class:`~cellflow.flow.GeneOffsets`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .._constants import COMBINATION_OFFSETS
from ..flow import FlowModule, GeneOffsets, TokenShifts, time_resolved_shifts
from ..pp._conditions import Condition
from ..vae import LatentVAE
from ..vae._sampling import offset_factor
from ._design import TrainingDesign
from ._plan import chunk_share, rank_and_world_size

PRIOR_STRENGTHS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
"""Prior strengths (counts summed over a group) :func:`choose_prior_strength` chooses from."""

COMBINATION_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
"""Factors on an unseen combination's summed offset changes :func:`choose_combination_scale` chooses from."""

MIN_COMBINATIONS = 3
"""Training combinations (every token measured alone) needed to choose a factor other than 1."""

SCORE_CHUNK = 256
"""Combinations scored at once by :func:`choose_combination_scale`."""

COUNT_CHUNK = 4096
"""Cells read and decoded at once in the pass over the counts (a distributed run shares the chunks out)."""


def fit_gene_offsets(
    module: FlowModule,
    vae: LatentVAE,
    matrix,
    design: TrainingDesign,
    posterior: tuple[np.ndarray, np.ndarray, np.ndarray],
    batch: np.ndarray | None,
    conditions: Sequence[Condition],
    tokens: Sequence[str],
    *,
    seed: int,
    combinations: str = "sum",
) -> float:
    """Give ``module`` its gene offsets (:func:`gene_offsets_from_cells`); returns the prior strength chosen.

    A measured condition gets its own offset (``mode="measured"``); over time (a backbone over
    time) the offsets are estimated at each time point and add up as the latent shifts do.
    ``combinations``: how an unseen combination's add up (see :func:`gene_offsets_from_cells`).
    """
    time_code = design.time_code if module.over_time else None
    module.gene_offsets = gene_offsets_from_cells(
        vae,
        matrix,
        posterior,
        batch,
        conditions,
        design.context,
        len(design.contexts),
        tokens,
        time_code=time_code,
        n_times=len(design.time_points) if module.over_time else 1,
        mode="additive" if module.over_time else "measured",
        seed=seed,
        features=module.token_features,
        combinations=combinations,
    )
    return module.gene_offsets.prior_strength


def gene_offsets_from_cells(
    vae: LatentVAE,
    matrix,
    posterior: tuple[np.ndarray, np.ndarray, np.ndarray],
    batch: np.ndarray | None,
    conditions: Sequence[Condition],
    context: np.ndarray,
    n_contexts: int,
    tokens: Sequence[str],
    *,
    time_code: np.ndarray | None = None,
    n_times: int = 1,
    mode: str = "measured",
    seed: int = 0,
    features: np.ndarray | None = None,
    combinations: str = "sum",
) -> GeneOffsets:
    """Estimate :class:`~cellflow.flow.GeneOffsets` from cells with their counts.

    One pass over the counts (:meth:`~cellflow.vae.LatentVAE.count_sums`) sums every gene's
    observed and expected counts over the cells of each group (a condition in a context; with
    ``time_code``, at each time point), separately for two random halves of each group. The
    prior strength is the one of :data:`PRIOR_STRENGTHS` whose offsets from one half best
    predict the other half's counts (:func:`choose_prior_strength`): a choice made on these
    cells alone. The offsets are then estimated on whole groups.

    Parameters
    ----------
    vae
        The trained VAE (a count likelihood).
    matrix
        Counts of the cells (may stay on disk).
    posterior
        ``(N, D)`` posterior means and sds and ``(N,)`` log library sizes of the cells.
    batch
        ``(N,)`` VAE batch codes, or ``None``.
    conditions
        Condition of every cell.
    context, n_contexts
        ``(N,)`` context code of every cell, and the number of contexts.
    tokens
        The model's token vocabulary.
    time_code, n_times
        ``(N,)`` time point of every cell and the number of time points, for offsets per time
        point (rows ``context * n_times + k``, as :func:`~cellflow.flow.time_resolved_shifts`;
        additive only); ``None`` pools the time points.
    mode
        ``"measured"`` or ``"additive"``, as :meth:`~cellflow.flow.TokenShifts.from_cells`.
    seed
        Seed of the halves and of the posterior draws (a generator of its own: the global
        random state is untouched). Under distributed training (an initialised process group)
        each of the ``W`` processes reads and decodes a ``W``-th of the chunks and the sums are
        added over the processes: every rank gets the offsets one process would estimate (every
        rank must call it).
    features
        ``(n_tokens, F)`` token features: the offsets of a token measured nowhere are predicted
        from them (as :meth:`~cellflow.flow.TokenShifts.from_cells`); ``None``: no change.
    combinations
        ``"sum"``: an unseen combination takes the control cells' offsets plus the sum of its
        tokens' changes. ``"fit"``: that sum times the factor that best predicts the counts of
        the training combinations whose tokens were all measured alone
        (:func:`choose_combination_scale`; ``shifts.combination_scale`` of the result).
    """
    if combinations not in COMBINATION_OFFSETS:
        raise ValueError(f"combinations={combinations!r} must be one of {COMBINATION_OFFSETS}.")
    context = np.asarray(context, dtype=np.int64)
    time_code = np.zeros(len(context), dtype=np.int64) if time_code is None else np.asarray(time_code, np.int64)
    keys = pd.Series([(c.tokens, c.doses) for c in conditions], dtype=object)
    condition_code = pd.factorize(keys)[0]
    group, uniques = pd.factorize((condition_code * n_contexts + context) * n_times + time_code)
    generator = torch.Generator().manual_seed(seed)
    half = (torch.rand(len(group), generator=generator) < 0.5).numpy().astype(np.int64)
    halves = 2 * group + half
    observed, expected = _count_sums(vae, matrix, halves, 2 * len(uniques), posterior, batch, generator)
    n_genes = observed.shape[1]
    observed, expected = observed.reshape(-1, 2, n_genes), expected.reshape(-1, 2, n_genes)
    strength = choose_prior_strength(observed, expected)
    offsets = np.log((observed.sum(axis=1) + strength) / (expected.sum(axis=1) + strength))
    first = np.unique(group, return_index=True)[1]  # a cell of each group, in group order
    group_conditions = [conditions[i] for i in first]
    group_context, group_time = context[first], time_code[first]
    if n_times > 1:
        if mode != "additive":
            raise ValueError("Gene offsets per time point are additive; pass mode='additive'.")
        codes = (group_context, group_time, n_contexts, n_times)
        shifts = time_resolved_shifts(offsets, group_conditions, *codes, tokens, features)
    else:
        shifts = TokenShifts.from_cells(offsets, group_conditions, group_context, n_contexts, tokens, mode, features)
    rows = group_context * n_times + group_time
    control = np.zeros((n_contexts * n_times, n_genes))
    is_control = np.array([c.is_control for c in group_conditions])
    control[rows[is_control]] = offsets[is_control]
    if combinations == "fit":
        summed, eligible = _summed_changes(shifts, group_conditions, tokens, rows, set(rows[is_control]), n_times)
        totals = observed[eligible].sum(axis=1), expected[eligible].sum(axis=1)
        shifts.combination_scale = choose_combination_scale(*totals, control[rows[eligible]], summed)
    return GeneOffsets(torch.as_tensor(control, dtype=torch.float32), shifts, strength)


def _summed_changes(shifts: TokenShifts, conditions, tokens, rows, control_rows, n_times):
    """The sum of the tokens' offset changes of every training combination whose tokens were all measured alone.

    Returns the sums ``(n_eligible, n_genes)`` and the eligible groups (boolean over ``conditions``):
    combinations of at least two tokens at a non-zero dose (the queries that
    :class:`~cellflow.flow.TokenShifts` scales), in a row with control cells, each token measured
    alone at the same time point (in any context). A token whose change was derived from a
    combination is not eligible: that combination would reproduce itself exactly.
    """
    token_id = {t: i for i, t in enumerate(tokens)}
    table, measured = shifts.table.numpy(), shifts.measured.numpy()
    alone_at_time = measured.reshape(-1, n_times, measured.shape[1]).any(axis=0)  # (n_times, n_tokens)
    eligible = np.zeros(len(conditions), dtype=bool)
    sums = []
    for i, (condition, row) in enumerate(zip(conditions, rows)):
        dosed = [(token_id.get(t, -1), d) for t, d in zip(condition.tokens, condition.doses) if d != 0]
        ids = [t for t, _ in dosed]
        if len(ids) < 2 or row not in control_rows or min(ids) < 0 or not alone_at_time[row % n_times, ids].all():
            continue
        eligible[i] = True
        sums.append(sum(d * table[row, t] for t, d in dosed))
    return (np.stack(sums) if sums else np.zeros((0, table.shape[2]))), eligible


def choose_combination_scale(
    observed: np.ndarray,
    expected: np.ndarray,
    control: np.ndarray,
    summed: np.ndarray,
    scales: Sequence[float] = COMBINATION_SCALES,
) -> float:
    """The factor on summed offset changes that best predicts measured combinations' counts.

    An unseen combination's offset is its control cells' plus the sum of its tokens' changes.
    Whether a sum carries over to combinations (or over- or undershoots, as when the tokens'
    changes correct one shared error of the decoder twice) is a property of the data, so it is
    chosen on the training combinations whose tokens were all measured alone: for each, the
    sum comes from other cells (the singles), and its own counts score it.

    Parameters
    ----------
    observed, expected
        ``(n, n_genes)`` observed counts and the decoder's expected counts summed over the cells
        of each such combination.
    control
        ``(n, n_genes)`` the offsets of its row's control cells.
    summed
        ``(n, n_genes)`` the dose-weighted sum of its tokens' offset changes.
    scales
        Candidates.

    Returns
    -------
    float
        The candidate ``s`` of the highest Poisson log-likelihood of the observed counts with
        means ``expected * exp(control + s * summed)``, rescaled to each combination's expected
        total (generation rescales each cell's: the offsets move counts between genes, not the
        library size; on sums over cells this is the same up to how the cells' means differ),
        summed over combinations and genes (of equally likely ones, the nearest to 1); 1 (plain
        arithmetic) with fewer than :data:`MIN_COMBINATIONS` combinations. Combinations are
        scored :data:`SCORE_CHUNK` at a time, so memory holds a few such blocks of genes.
    """
    if len(observed) < MIN_COMBINATIONS:
        return 1.0
    scores = np.zeros(len(scales))
    for start in range(0, len(observed), SCORE_CHUNK):
        rows = slice(start, start + SCORE_CHUNK)
        block = torch.as_tensor(expected[rows], dtype=torch.float64)
        for k, scale in enumerate(scales):
            offset = torch.as_tensor(control[rows] + scale * summed[rows], dtype=torch.float64)
            mean = (block * offset_factor(block, offset)).numpy()  # as generation corrects each cell's means
            scores[k] += _poisson_log_likelihood(observed[rows], mean)
    best = np.flatnonzero(scores == scores.max())
    return float(min((scales[i] for i in best), key=lambda s: abs(s - 1.0)))


def _poisson_log_likelihood(counts: np.ndarray, mean: np.ndarray) -> float:
    """``sum(counts * log(mean) - mean)`` (the terms that depend on the mean)."""
    return float(np.sum(np.where(counts > 0, counts * np.log(np.maximum(mean, 1e-300)), 0.0) - mean))


def _count_sums(vae, matrix, group, n_groups, posterior, batch, generator) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`~cellflow.vae.LatentVAE.count_sums`, shared out among the processes of a distributed run."""
    if rank_and_world_size()[1] == 1:
        return vae.count_sums(matrix, group, n_groups, posterior, batch, generator=generator, batch_size=COUNT_CHUNK)
    share = chunk_share(matrix.shape[0], COUNT_CHUNK)
    sums = vae.count_sums(
        matrix, group, n_groups, posterior, batch, generator=generator, batch_size=COUNT_CHUNK, chunks=share
    )
    device = next(vae.module.parameters()).device  # NCCL reduces tensors on the rank's GPU, gloo on the CPU
    totals = []
    for part in sums:
        tensor = torch.as_tensor(part, device=device)
        torch.distributed.all_reduce(tensor)
        totals.append(tensor.cpu().numpy())
    return totals[0], totals[1]


def choose_prior_strength(
    observed: np.ndarray, expected: np.ndarray, strengths: Sequence[float] = PRIOR_STRENGTHS
) -> float:
    """The prior strength whose offsets from one half of each group best predict the other half's counts.

    Parameters
    ----------
    observed, expected
        ``(n_groups, 2, n_genes)`` observed and expected counts summed over each half of each group.
    strengths
        Candidates.

    Returns
    -------
    float
        The candidate of the highest Poisson log-likelihood of each half's observed counts with
        means ``expected * (observed_other + a) / (expected_other + a)``, summed over both halves,
        groups and genes (groups with an empty half left out).
    """
    both = (expected.sum(axis=2) > 0).all(axis=1)
    observed, expected = observed[both], expected[both]
    scores = []
    for a in strengths:
        score = 0.0
        for held, used in ((0, 1), (1, 0)):
            mean = expected[:, held] * (observed[:, used] + a) / (expected[:, used] + a)
            score += _poisson_log_likelihood(observed[:, held], mean)
        scores.append(score)
    return float(strengths[int(np.argmax(scores))])
