"""``cf.tl.generate``: predicted cells of any condition, as an AnnData of counts."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._constants import LATENT_KEY
from ..datasets._write import check_chunk_size, check_output, open_backed, write_chunks
from ..flow import ConditionBatch
from ..models._cellflow import CellFlow
from ..train._plan import rank_and_world_size
from ._arguments import (
    _check_conditions,
    _check_finite,
    _check_guidance,
    _check_int,
    _check_model,
    _check_solver,
    _context,
    _parse,
    _time_points,
)
from ._generated_obs import ObsPlan, obs_row, with_obs

MAX_ENTRIES = 2_000_000_000
"""Largest ``n_cells x conditions x time points x genes`` one call of :func:`generate` keeps in memory.

The result is one sparse matrix in memory, and a sparse matrix with more entries than
2**31 - 1 needs 64-bit indices that many downstream tools do not read. Larger sets are
written to disk with ``out=...`` (no limit there), or generated in batches.
"""

BLOCK_ENTRIES = 2**24
"""About ``cells x genes`` generated at once: one block of cells is drawn, carried and decoded together.

The decoder forms the block's expected counts densely (float32: 64 MB at this size). Blocks
hold whole multiples of 1024 cells, at least 1024 and at most 16384 (see :func:`block_cells`).
"""

if TYPE_CHECKING:
    from anndata import AnnData


def generate(
    model: CellFlow,
    *,
    conditions: Sequence[str],
    n_cells: int = 500,
    covariates: Mapping[str, str] | None = None,
    doses: Sequence[str | float] | None = None,
    times: Sequence[float] | None = None,
    seed: int = 0,
    method: str | None = None,
    steps: int | None = None,
    guidance: float = 1.0,
    sample_counts: bool = True,
    out: str | os.PathLike | None = None,
    chunk_size: int = 10_000,
    overwrite: bool = False,
    distributed: bool = False,
) -> AnnData:
    """Generate cells of the given conditions with a trained model.

    Source cells (control cells of the context, or noise) are carried by the flow's ODE to
    the condition; the decoder turns their latents and library sizes into counts. The library
    sizes are those of the context's control cells drawn as sources, moved by the condition's
    mean change of the log library size in training (the sum of its tokens' for an unmeasured
    combination); counts are decoded from a draw around each latent with its source cell's
    posterior standard deviation (scvi-tools' posterior predictive), with the condition's gene
    offsets (:class:`~cellflow.flow.GeneOffsets`) on the expected counts. ``obsm["X_cellflow"]``
    holds the latents themselves, comparable with :func:`~cellflow.tl.encode`'s posterior means.

    Parameters
    ----------
    model
        A trained :class:`~cellflow.CellFlow`.
    conditions
        Perturbation labels, e.g. ``["KLF1", "KLF1+MAP2K6"]``; order within a
        combination does not matter; combinations never measured are allowed.
    n_cells
        Cells to generate per condition (and time point): an int >= 1. ``n_cells x
        len(conditions) x time points x genes`` may not exceed :data:`MAX_ENTRIES` (2e9).
    covariates
        Context of the generated cells, e.g. ``{"cell_type": "K562"}``; may be omitted when
        the training data had a single context.
    doses
        A list with one dose (or dose string aligned with the tokens, ``"1+0.5"``) per condition;
        default: every token at dose 1, the only dose a model set up without a ``dose_key`` knows.
    times
        Time points to generate (models set up with ``time_key``). A backbone that takes time
        as part of the condition (``mlp``, ``set_attention``) generates each time point
        separately, from control cells of the context. A backbone over time (``mamba``)
        carries ``n_cells`` control trajectories of the context (control cells chained by
        optimal transport across the training time points) through the flow at once and
        returns their cells at ``times``, which must be training time points.
    seed
        Seed of the source draw and of the count sampling: the same seed gives the same cells,
        in memory or written to disk in chunks of any size. An int from 0 to 2**63 - 1.
    method, steps
        ODE solver (``"euler"``, ``"heun"``, ``"rk4"`` with ``steps`` fixed steps, or
        ``"dopri5"``, adaptive). Default: ``"euler"`` with 4 steps for a reflowed model
        (what ``model.train()`` returns; ``distill_steps`` steps after distillation), else
        ``"heun"`` with 8 steps: reflow straightens the flow so that a few Euler steps land where
        an accurate solver would (the solver-quality benchmark compares them on real data).
    guidance
        Classifier-free guidance scale ``w``: the velocity is ``v(null) + w * (v(condition)
        - v(null))``. ``1`` (default) uses the condition alone; ``w > 1`` pushes further
        from the unconditional flow, ``0`` ignores the condition. Needs a model trained
        with ``condition_dropout > 0`` (the null condition is learned there).
    sample_counts
        Sample counts from the likelihood (around a posterior draw of each latent); ``False``
        returns its mean at the latent itself (expected counts).
    out
        Write the cells to this ``.h5ad`` or ``.zarr`` path instead of returning them in memory,
        for sets larger than memory (no :data:`MAX_ENTRIES` limit): cells are generated,
        decoded and written a chunk at a time, so memory holds a chunk of cells, never the
        whole count matrix (a backbone over time also holds the latent trajectories of one
        condition while it decodes them at each time point). The file appears under its name
        only once complete.
    chunk_size
        Cells written at a time with ``out`` (an int >= 1). Cells are made in blocks of a fixed
        size whatever ``chunk_size`` (whole multiples of 1024 cells, about 16 million expression
        values: :data:`BLOCK_ENTRIES`), so the cells, like the file, do not depend on it.
    overwrite
        With ``out``: replace an existing file (once the new one is complete); without it an
        existing ``out`` is refused before any cell is generated.

    distributed
        Share the work out among the processes of a distributed run (a script that every process
        runs, e.g. after :meth:`~cellflow.CellFlow.train` with ``strategy="ddp"``, whose process
        group stays initialised): each process makes every ``W``-th block of cells and every
        process receives all of them, in order, the cells one process would make. Every process
        must then make the same call (a call on rank 0 alone would wait for the others forever);
        with ``out``, rank 0 writes the file and the others return it opened once complete. Memory
        holds ``W`` blocks of cells at a time (for a backbone over time, ``W`` conditions' cells at
        every requested time point). Without an initialised process group it changes nothing.

    Returns
    -------
    AnnData, in memory, or with ``out`` opened from the file without loading ``X`` (``.h5ad``:
    :func:`anndata.read_h5ad` with ``backed="r"``; ``.zarr``: ``X`` an
    :func:`anndata.io.sparse_dataset`; slice it to read cells; as in anndata's backed mode,
    ``obs`` and ``obsm`` are read into memory). The cells are the same with or without ``out``.
    ``X`` holds the generated counts (sparse, the training genes in training order),
    ``obs`` the perturbation, covariates, dose and time of every cell (and, for a backbone
    over time only, ``trajectory``: an integer shared by the cells of one predicted trajectory
    across time points; other backbones generate each time point independently, so their
    cells have no trajectory), ``obsm["X_cellflow"]`` the predicted latents, and
    ``uns["cellflow_generate"]`` recording model, solver, steps and seed.

    Raises
    ------
    TypeError
        Arguments of the wrong type (``n_cells`` and ``seed`` must be ints, not bools; ``doses``
        a list, not a string; ``covariates`` a mapping).
    FileExistsError
        ``out`` exists and ``overwrite`` is false.
    ValueError
        Anything the model cannot generate, named by its argument: unknown tokens, covariate
        values or times, doses a model without ``dose_key`` does not know, a request above
        :data:`MAX_ENTRIES`, guidance without a null condition. Every check runs before any cell
        is generated.
    """
    import anndata as ad

    _check_model(model)
    module = model.module
    _check_solver(method, steps)
    method, steps = module.sampling.solver(method, steps)
    setup, codec = model.setup, model.codec
    conditions = _check_conditions(conditions)
    _check_int("n_cells", n_cells)
    if n_cells < 1:
        raise ValueError(f"n_cells={n_cells} must be at least 1.")
    _check_int("seed", seed)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed={seed} must be between 0 and 2**63 - 1.")
    if not isinstance(distributed, bool | np.bool_):
        raise TypeError(f"distributed must be True or False, got {distributed!r}.")
    if not isinstance(sample_counts, bool | np.bool_):
        raise TypeError(f"sample_counts must be True (draw counts) or False (expected counts), got {sample_counts!r}.")
    parsed = _parse(model, conditions, doses)
    _check_guidance(model, guidance)
    time_points = _time_points(model, times)
    entries = int(n_cells) * len(conditions) * len(time_points) * len(model.genes)
    if out is not None:
        check_output(out, overwrite)
        chunk_size = check_chunk_size(chunk_size)
    elif entries > MAX_ENTRIES:
        raise ValueError(
            f"n_cells={n_cells} for {len(conditions)} condition(s) x {len(time_points)} time point(s) x "
            f"{len(model.genes)} genes asks for {entries:.3g} expression values, more than one call generates "
            f"in memory ({MAX_ENTRIES:.0e}). Write them to disk in chunks with out='generated.h5ad', or generate "
            "in smaller batches: fewer cells, or a few conditions per call."
        )
    n_cells, seed = int(n_cells), int(seed)
    context_values = _context(model, covariates)
    context = torch.tensor([module.reference.context_code(context_values)])
    covariate_codes = codec.encode_covariates([dict(zip(codec.covariate_keys, context_values))])

    rows = [obs_row(cond, i, t, setup) for i, cond in enumerate(parsed) for t in time_points]
    obs = ObsPlan(rows, n_cells, setup, codec.covariate_keys, context_values, module.over_time)
    nfe: list[int] = []
    blocks = _cell_blocks(
        model,
        parsed,
        time_points,
        n_cells,
        covariate_codes,
        context,
        seed,
        nfe,
        distributed=bool(distributed),
        method=method,
        steps=steps,
        guidance=guidance,
        sample_counts=sample_counts,
    )

    def uns() -> dict:
        return {
            "cellflow_generate": {
                "model": repr(model),
                "backbone": model.config.backbone,
                "method": method,
                "steps": int(steps),
                "guidance": float(guidance),
                "seed": int(seed),
                "sample_counts": bool(sample_counts),
                "function_evaluations_per_condition": int(max(nfe)),
            }
        }

    var = pd.DataFrame(index=pd.Index(model.genes))
    if out is not None:
        chunks = with_obs(blocks, obs)
        options = {"var": var, "uns": uns, "chunk_size": chunk_size, "overwrite": overwrite}
        return _write(out, chunks, distributed=bool(distributed), **options)
    counts, latents = [], []
    for x, z in blocks:
        counts.append(x)
        latents.append(z)
    matrix = counts[0] if len(counts) == 1 else sp.vstack(counts, format="csr")  # vstack would copy a lone block
    result = ad.AnnData(X=matrix, obs=obs.rows(0, matrix.shape[0]), var=var)
    result.obsm[LATENT_KEY] = np.concatenate(latents).astype(np.float32)
    result.uns.update(uns())
    return result


def block_cells(n_genes: int) -> int:
    """Cells generated at once for a model of ``n_genes`` genes: about :data:`BLOCK_ENTRIES` expression values.

    A block is drawn (sources), carried (the ODE) and decoded (counts) together. The same
    blocks make the cells of a request whether they are kept in memory or written to disk, in
    chunks of any size: that is why the cells do not depend on ``chunk_size``. Each block draws
    from its own generator (:func:`block_seed`); a request of one block draws its randomness
    exactly as one call of :meth:`~cellflow.flow.FlowModule.sample` and one decoding with the
    request's seed would.
    """
    return int(np.clip(BLOCK_ENTRIES // n_genes // 1024 * 1024, 1024, 16384))


def _cell_blocks(
    model: CellFlow,
    parsed: list,
    time_points: list[float],
    n_cells: int,
    covariate_codes: torch.Tensor,
    context: torch.Tensor,
    seed: int,
    nfe: list[int],
    *,
    method: str,
    steps: int,
    guidance: float,
    sample_counts: bool,
    distributed: bool,
) -> Iterator[tuple[sp.csr_matrix, np.ndarray]]:
    """Counts and latents of consecutive blocks of cells: conditions in order, then time points, then cells.

    The request is cut into units of work: one block of :func:`block_cells` cells of a
    condition at a time point, drawn, carried by the flow and decoded together, or, for a
    backbone over time, every block of a condition's trajectories, carried and then decoded at
    each requested time point in turn (the row order of the result; their latents are held for
    one condition). Block ``b`` of the request draws from its own generator
    (:func:`block_seed`), so a unit's cells do not depend on the units before it: with
    ``distributed`` each of the ``W`` processes computes every ``W``-th unit and all of them
    receive the units in order (:func:`_in_order`), the same cells one process makes. ``nfe``
    receives each block's velocity evaluations.
    """
    module, codec, setup = model.module, model.codec, model.setup
    block = block_cells(len(model.genes))
    per_series = -(-n_cells // block)  # blocks of one condition at one time point (or one set of trajectories)
    over_time = module.over_time
    series = [(c, t) for c in range(len(parsed)) for t in ([None] if over_time else range(len(time_points)))]

    def unit(index: int) -> Iterator[tuple[sp.csr_matrix, np.ndarray, int]]:
        c, t = series[index]
        cond = parsed[c]
        ids, dose, mask = codec.encode_conditions([cond])
        label = cond.label(setup.control, setup.combo_sep)
        time_point = torch.tensor([0.0 if t is None else time_points[t]], dtype=torch.float32)
        condition = ConditionBatch(ids, dose, mask, covariate_codes, time_point, context)
        offset = module.gene_offset(condition)  # (1, G), over time (1, T, G); None without
        drawn = []
        for j, start in enumerate(range(0, n_cells, block)):
            generator = torch.Generator().manual_seed(block_seed(seed, index * per_series + j))
            cells = module.sample(
                condition, min(block, n_cells - start), generator, method=method, steps=steps, guidance=guidance
            )
            z1, log_library, batch, scale, calls = cells
            _check_finite(z1, label, method, steps)
            if over_time:  # (n, T, D) trajectories: decoded once the condition's are all carried
                drawn.append((cells, generator))
                continue
            x = model.vae.decode(
                z1,
                log_library[:, None],
                batch[:, None],
                sample=sample_counts,
                generator=generator,
                sparse=True,
                latent_scale=scale,
                gene_offset=offset,
            )
            yield x, z1.numpy().astype(np.float32, copy=False), calls
        for t_out in time_points if over_time else []:
            k = model.time_points.index(t_out)
            for (z1, log_library, batch, scale, calls), generator in drawn:
                x = model.vae.decode(
                    z1[:, k],
                    log_library[:, k, None],
                    batch[:, k, None],
                    latent_scale=None if scale is None else scale[:, k],
                    gene_offset=None if offset is None else offset[:, k],
                    sample=sample_counts,
                    generator=generator,
                    sparse=True,
                )
                yield x, z1[:, k].numpy().astype(np.float32, copy=False), calls

    for x, z, calls in _in_order(unit, len(series), distributed):
        nfe.append(calls)
        yield x, z


def block_seed(seed: int, block: int) -> int:
    """Seed of block ``block`` of a request: ``seed`` itself for the first block, derived from both for the others.

    The first block draws as one call of :meth:`~cellflow.flow.FlowModule.sample` and one
    decoding with ``seed`` would; the others get seeds from numpy's ``SeedSequence``, which no
    two blocks of a request share.
    """
    if block == 0:
        return seed
    return int(np.random.SeedSequence([seed, block]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _in_order(unit, n_units: int, distributed: bool) -> Iterator:
    """The items of ``unit(0)``, ``unit(1)``, ... in order; with ``distributed``, computed across processes.

    With ``W`` processes, process ``r`` computes units ``r``, ``r + W``, ... and every process
    receives every unit's items, round by round (``torch.distributed.all_gather_object``):
    memory holds one round, ``W`` units. Every process must call it.
    """
    rank, world = rank_and_world_size() if distributed else (0, 1)
    if world == 1:
        for index in range(n_units):
            yield from unit(index)
        return
    for first in range(0, n_units, world):
        mine = first + rank
        items = list(unit(mine)) if mine < n_units else []
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, items)
        for items in gathered:
            yield from items


def _write(out, chunks, *, distributed: bool, **options) -> AnnData:
    """Write the chunks to ``out`` (see :func:`~cellflow.datasets._write.write_chunks`) and return the result opened.

    With ``distributed`` every process takes part in making the cells, but only rank 0 writes
    them; the others open its file once it is complete.
    """
    rank, world = rank_and_world_size() if distributed else (0, 1)
    if world == 1:
        return write_chunks(out, chunks, **options)
    if rank == 0:
        written = write_chunks(out, chunks, **options)
    else:
        for _ in chunks:  # every rank makes its share of the cells; rank 0 writes them all
            pass
    torch.distributed.barrier()
    return written if rank == 0 else open_backed(out)
