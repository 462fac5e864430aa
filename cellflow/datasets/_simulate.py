"""Simulated Perturb-seq counts from a gene-regulatory network, with the truth attached."""

from __future__ import annotations

import os
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from ._arguments import check_arguments, resolve_times
from ._grn import GeneRegulatoryNetwork, sample_network
from ._screen_design import allocate_cells, plan_perturbations
from ._simulate_cells import BLOCK_CELLS, cell_obs, count_blocks
from ._write import check_chunk_size, check_output, write_chunks

UNS_KEY = "simulation"
CONTROL = "control"
_CATEGORICAL = ("perturbation", "cell_type", "dose")


def simulate_perturbseq(
    n_cells: int = 5000,
    *,
    n_genes: int = 200,
    n_cell_types: int = 2,
    n_timepoints: int = 1,
    n_perturbations: int = 12,
    n_combinations: int = 12,
    combination_size: int | Sequence[int] = 2,
    doses: Sequence[float] = (1.0,),
    dose_combinations: str = "shared",
    perturbation_type: str = "knockdown",
    control_fraction: float = 0.15,
    library_size: float | tuple[float, float] = (3000.0, 0.4),
    times: Sequence[float] | None = None,
    regulator_fraction: float = 0.15,
    regulators_per_gene: float = 3.0,
    cell_type_scale: float = 1.0,
    n_programs: int = 3,
    program_scale: float = 0.3,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    chunk_size: int = 10_000,
    overwrite: bool = False,
) -> ad.AnnData:
    """Simulate a Perturb-seq screen (single and combined perturbations) from a gene-regulatory network.

    A random sparse signed network with hub regulators drives every gene through Hill-sigmoid
    regulation (see :mod:`cellflow.datasets._grn`). A perturbation scales its target's production:
    a knockdown by ``1 - efficacy * dose`` (floored), an activation by ``1 + (fold - 1) * dose``.
    The effect spreads through the network to a new state, so combinations interact
    (synergy, buffering, epistasis) rather than add. Cell types are different basal inputs.
    As a screen would be planned, targets favour regulators with broad effects in a pilot
    knockdown screen, and combinations favour perturbations whose effects overlap.
    Each cell's expression is the condition's state times a mean-one lognormal factor from a few
    shared programs; counts are negative binomial (gene-specific dispersion) around it at a
    lognormal library size, so ``E[counts | library] = library * true_mean`` exactly.

    Parameters
    ----------
    n_cells
        Total number of cells.
    n_genes
        Number of genes, named ``"G0000"``, ``"G0001"``, ...
    n_cell_types
        Number of cell types (``"type_0"``, ...): every condition is measured in each.
    n_timepoints
        Number of measurement times after perturbation. With 1 (and no ``times``) cells sit at the
        perturbed steady state and ``time`` is ``inf``; with more, times default to a geometric
        series from 2 to 48 hours and cells follow the dynamics from the control steady state.
    n_perturbations
        Number of single perturbations; targets are regulators (with targets) where possible.
    n_combinations
        Number of combinations of the single perturbations.
    combination_size
        Tokens per combination; a sequence cycles through several sizes.
    doses
        Dose levels; every perturbation is measured at each.
    dose_combinations
        ``"shared"``: all tokens of a combination share the dose; ``"all"``: every tuple of dose levels.
    perturbation_type
        ``"knockdown"`` (CRISPRi-like), ``"activation"`` (CRISPRa-like) or ``"mixed"`` (per target, at random).
    control_fraction
        Minimum fraction of control cells, split evenly over cell types and time points.
    library_size
        Median library size, or ``(median, log-sd)`` of a lognormal.
    times
        Explicit measurement times in hours (``inf`` = steady state); overrides the default times.
    regulator_fraction
        Fraction of genes that are regulators.
    regulators_per_gene
        Mean number of regulators per gene.
    cell_type_scale
        Standard deviation of the per-gene basal input differences between cell types.
    n_programs
        Number of shared cell-level programs: lognormal factors that vary together across genes.
    program_scale
        Log-scale standard deviation of a gene's loading on a program.
    seed
        Seed of the random generator; the network depends only on the seed, ``n_genes``,
        ``n_cell_types`` and the network options.
    out
        Write the screen to this ``.h5ad`` or ``.zarr`` path instead of building it in memory,
        for screens larger than memory: the cells are drawn and written ``chunk_size`` at a
        time, so memory holds one chunk (and 4 bytes per cell for its condition), never the
        whole count matrix. The cells are the same as without ``out``, whatever ``chunk_size``.
        The file appears under its name only once complete.
    chunk_size
        Cells written at a time with ``out`` (an int >= 1).
    overwrite
        With ``out``: replace an existing file (once the new one is complete); without it an
        existing ``out`` is refused before anything is simulated.

    Returns
    -------
    anndata.AnnData
        In memory, or with ``out`` opened from the file without loading ``X``: ``.h5ad`` backed
        (:func:`anndata.read_h5ad` with ``backed="r"``), ``.zarr`` with ``X`` an
        :func:`anndata.io.sparse_dataset` (slice it, e.g. ``adata.X[:1000]``, or
        ``adata[:1000].to_memory()``, to read cells); as in anndata's backed mode, ``obs`` is read.
        ``X``: CSR float32 integer counts; ``obs``: ``perturbation``, ``cell_type``, ``dose``
        (categorical; doses aligned with the sorted tokens, controls ``"0"``) and ``time`` (float);
        ``uns["simulation"]``: ``params`` (this call's arguments), ``true_mean`` (conditions x genes,
        expected counts / library size; rows sum to 1), ``conditions`` (one row per ``true_mean``
        row), ``network`` (edges: regulator, target, weight) and ``perturbations`` (target, mode,
        strength). :func:`true_means` turns the truth into a table.

    Examples
    --------
    >>> adata = simulate_perturbseq(2000, n_genes=100, seed=1)
    >>> adata.obs["perturbation"].iloc[0]  # doctest: +SKIP
    'G0041+G0087'
    """
    params = {k: v for k, v in locals().items() if k not in ("out", "chunk_size", "overwrite")}
    sizes = check_arguments(params)
    if out is not None:
        check_output(out, overwrite)
        chunk_size = check_chunk_size(chunk_size)
    time_points = resolve_times(n_timepoints, times)
    library_median, library_sigma = library_size if isinstance(library_size, tuple | list) else (library_size, 0.0)
    network_seed, design_seed, cell_seed = np.random.SeedSequence(seed).spawn(3)
    network = sample_network(
        np.random.default_rng(network_seed),
        n_genes,
        n_cell_types,
        regulator_fraction=regulator_fraction,
        regulators_per_gene=regulators_per_gene,
        cell_type_scale=cell_type_scale,
    )
    gene_names = _gene_names(n_genes)

    design_rng = np.random.default_rng(design_seed)
    panel, perturbations, factor = plan_perturbations(
        design_rng,
        network,
        n_perturbations=n_perturbations,
        n_combinations=n_combinations,
        sizes=sizes,
        doses=tuple(float(d) for d in doses),
        dose_combinations=dose_combinations,
        perturbation_type=perturbation_type,
    )

    proportions = _condition_proportions(network, factor, time_points)  # (T, types, K, G)
    conditions = pd.DataFrame(
        [
            {
                "perturbation": "+".join(gene_names[panel.targets[i]] for i in m) or CONTROL,
                "cell_type": f"type_{c}",
                "dose": "+".join(f"{dose:g}" for dose in d) or "0",
                "time": t,
            }
            for t in time_points
            for c in range(n_cell_types)
            for m, d in perturbations
        ]
    )
    true_mean = proportions.reshape(-1, n_genes)

    is_control = (conditions["perturbation"] == CONTROL).to_numpy()
    n_control, n_perturbed = allocate_cells(
        design_rng, n_cells, int(is_control.sum()), int((~is_control).sum()), control_fraction
    )
    cells_per_condition = np.empty(len(conditions), dtype=int)
    cells_per_condition[is_control], cells_per_condition[~is_control] = n_control, n_perturbed
    cell_rng = np.random.default_rng(cell_seed)
    # int32 codes: 4 bytes per cell is all that is held for every cell of a screen written to disk.
    condition_of_cell = cell_rng.permutation(np.repeat(np.arange(len(conditions), dtype=np.int32), cells_per_condition))
    counts = count_blocks(
        cell_rng, true_mean, condition_of_cell, (library_median, library_sigma), n_programs, program_scale
    )
    obs_table = conditions.astype({key: pd.CategoricalDtype(conditions[key].unique()) for key in _CATEGORICAL})

    var = pd.DataFrame(index=gene_names)
    uns = {
        UNS_KEY: {
            "params": _json_like(params),
            "true_mean": true_mean,
            "conditions": conditions,
            "network": _edge_table(network, gene_names),
            "perturbations": pd.DataFrame(
                {"target": gene_names[panel.targets], "mode": panel.modes.astype(str), "strength": panel.strengths}
            ),
        }
    }
    if out is not None:
        chunks = (
            (block, cell_obs(obs_table, condition_of_cell[start : start + block.shape[0]], start, n_cells), {})
            for start, block in zip(range(0, n_cells, BLOCK_CELLS), counts)
        )
        return write_chunks(out, chunks, var=var, uns=uns, chunk_size=chunk_size, overwrite=overwrite)
    X = sparse.vstack(list(counts), format="csr")
    return ad.AnnData(X=X, obs=cell_obs(obs_table, condition_of_cell, 0, n_cells), var=var, uns=uns)


def true_means(adata: ad.AnnData) -> pd.DataFrame:
    """The simulator's true expression proportions as a table.

    Parameters
    ----------
    adata
        Output of :func:`simulate_perturbseq` (also after a round trip through h5ad).

    Returns
    -------
    Conditions x genes: expected counts divided by library size. The index is a MultiIndex of
    ``perturbation``, ``cell_type``, ``time`` and, where several dose levels make those ambiguous,
    ``dose``. Columns are ``adata.var_names``.
    """
    if UNS_KEY not in adata.uns or "true_mean" not in adata.uns[UNS_KEY]:
        raise ValueError(
            f"Did not find adata.uns[{UNS_KEY!r}]['true_mean']; true_means needs the output of "
            "cellflow.datasets.simulate_perturbseq."
        )
    truth = adata.uns[UNS_KEY]
    conditions = pd.DataFrame(truth["conditions"]).reset_index(drop=True)
    keys = ["perturbation", "cell_type", "time"]
    if conditions.duplicated(keys).any():
        keys.insert(1, "dose")
    index = pd.MultiIndex.from_frame(conditions[keys].astype({k: str for k in keys if k != "time"}))
    return pd.DataFrame(np.asarray(truth["true_mean"]), index=index, columns=adata.var_names.copy())


def _condition_proportions(network: GeneRegulatoryNetwork, factor: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Expression proportions ``(n_times, n_cell_types, K, G)`` of each perturbation row of ``factor``."""
    n_types, (n_rows, n_genes) = network.basal.shape[0], factor.shape
    basal = np.repeat(network.basal, n_rows, axis=0)  # (types * K, G)
    stacked = np.tile(factor, (n_types, 1))
    if np.isinf(times).all():
        states = network.steady_state(basal, stacked)[None]
    else:
        start = network.steady_state(network.basal, np.ones((n_types, n_genes)))
        states = network.integrate(np.repeat(start, n_rows, axis=0), basal, stacked, times)
    proportions = states / states.sum(axis=-1, keepdims=True)
    return proportions.reshape(len(times), n_types, n_rows, n_genes)


def _gene_names(n_genes: int) -> np.ndarray:
    width = max(4, len(str(n_genes - 1)))
    return np.array([f"G{i:0{width}d}" for i in range(n_genes)], dtype=object)


def _edge_table(network: GeneRegulatoryNetwork, gene_names: np.ndarray) -> pd.DataFrame:
    edges = network.weights.tocoo()
    return pd.DataFrame(
        {
            "regulator": gene_names[network.regulators[edges.row]].astype(str),
            "target": gene_names[edges.col].astype(str),
            "weight": edges.data,
        }
    )


def _json_like(params: dict) -> dict:
    """Arguments as h5ad-writable plain values: sequences become lists, ``None`` the string ``"None"``."""
    out = {}
    for key, value in params.items():
        if value is None:
            out[key] = "None"
        elif isinstance(value, Sequence) and not isinstance(value, str):
            out[key] = [float(v) if isinstance(v, float) else v for v in value]
        else:
            out[key] = value
    return out
