"""Generation speed of cellflow: ``cf.tl.generate`` of 10,000 cells with several solvers, decoding included.

What is measured (every number in the same process, at the same torch thread count):

1. ``matmul``: the machine's matrix-multiply rate (``_measure.matmul_rows``), the peak that
   ``frac_peak`` divides by (see ``train_speed.py``).
2. ``generate``: ``cf.tl.generate`` of ``--n-cells`` cells (default 10,000) of one double, count
   decoding and sampling included, with the default solver of a flow that was not reflowed
   (heun, 8 steps) and with euler 1, 2 and 4 steps (4 is the default after reflow); best of
   ``--repeats`` (as many as fit ``--budget``). The model is ``mlp`` and ``set_attention`` with
   their default options, latent 32, on simulated data (3,000 cells, 2 cell types,
   ``--genes`` genes), with a VAE trained for one epoch and a flow trained for 10 steps: the
   time of a solver step does not depend on how well the flow fits. The issue's target:
   10,000 cells in under 2 s on 2 CPU cores (column ``under_2s``; it only speaks for the
   target when ``--threads 2``). FLOPs are counted on two small calls and extrapolated
   (every operator's cost is affine in the number of cells). ``nfe`` is the number of
   velocity evaluations per condition.
3. The decode/sampling split, in the note of the heun row: seconds of the VAE decoder alone
   (expected counts), of decoding with count sampling (cellflow's block-parallel numpy
   sampler), and of torch's serial gamma-Poisson sampler on the same NB parameters (what
   cellflow sampled with before). Sampling the counts costs in proportion to cells x genes,
   so the answer depends on ``--genes`` (2,000 by default; Norman's subset has 500).
4. Peak memory of every generation (``peak_mb``, ``added_mb``; see ``_measure.PeakMemory``).

Run (set the thread count once, for the whole run, so that numpy/scipy's BLAS and torch agree)::

    OMP_NUM_THREADS=2 .venv/bin/python -u benchmarks/generate_speed.py --threads 2 [--genes 500] [--out DIR]
    OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/generate_speed.py --quick   # smoke run: 2,000 cells

Options: ``--threads`` (default ``OMP_NUM_THREADS``, else all cores), ``--backbones``,
``--genes``, ``--n-cells``, ``--repeats``, ``--budget`` (seconds the repeats of one row may
take), ``--seed``, ``--quick`` (2,000 cells, one repeat, one matmul size), ``--out DIR``
(writes ``generate_speed.csv`` as the run goes), ``--results-page`` (writes the table into
``docs/results.md``: section ``generate_speed`` at 500 genes, ``generate_speed-G`` at ``G``).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import (  # noqa: E402
    COLUMNS,
    PeakMemory,
    best_seconds,
    check_threads,
    common_arguments,
    count_flops,
    format_table,
    matmul_rows,
    rates,
    resolve_threads,
    results_markdown,
    row,
    save_rows,
    start_run,
    throughput_data,
    throughput_model,
)
from _results import provenance, write_results_section  # noqa: E402

GENERATION_SOLVERS = [("heun", 8), ("euler", 1), ("euler", 2), ("euler", 4)]
BACKBONES = ("mlp", "set_attention")
CSV = "generate_speed.csv"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--genes", type=int, default=2000, help="genes of the simulated data")
    parser.add_argument("--n-cells", type=int, default=10_000, help="cells generated per row")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds the repeats of one row may take")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 cells, one repeat")
    args = parser.parse_args(argv)
    resolve_threads(args)
    if args.quick:
        args.n_cells, args.repeats = min(args.n_cells, 2000), 1
    args.backbones = args.backbones.split(",")
    unknown = set(args.backbones) - set(BACKBONES)
    if unknown:
        parser.error(f"--backbones: {sorted(unknown)} not measured here; choose from {', '.join(BACKBONES)}.")
    if min(args.threads, args.repeats, args.n_cells, args.genes) < 1:
        parser.error("--threads, --repeats, --n-cells and --genes must be at least 1.")
    return args


def generation_rows(model, adata, backbone: str, args, peak: dict[str, float], memory: PeakMemory) -> list[dict]:
    """Generate ``args.n_cells`` cells of one double with each solver of :data:`GENERATION_SOLVERS`."""
    import cellflow as cf

    obs = adata.obs[adata.obs["perturbation"].astype(str).str.contains("+", regex=False)]
    condition, cell_type = str(obs["perturbation"].iloc[0]), str(obs["cell_type"].iloc[0])
    rows = []
    scaled = "" if args.n_cells == 10_000 else f", scaled from {args.n_cells} cells"
    for method, steps in GENERATION_SOLVERS:

        def run(n_cells: int, method=method, steps=steps):
            return cf.tl.generate(
                model,
                conditions=[condition],
                n_cells=n_cells,
                covariates={"cell_type": cell_type},
                seed=args.seed,
                method=method,
                steps=steps,
            )

        # Every operator's cost is affine in the number of cells: count two small calls and extrapolate,
        # rather than pay for a third large one under the (slower) counter.
        small = 64
        flops_small, _ = count_flops(partial(run, small))
        flops_double, _ = count_flops(partial(run, 2 * small))
        flops = flops_small + (flops_double - flops_small) * (args.n_cells - small) / small
        token = memory.start()
        start = time.perf_counter()
        generated = run(args.n_cells)
        first = time.perf_counter() - start
        more = min(args.repeats - 1, int(args.budget / first))
        seconds = min(first, best_seconds(partial(run, args.n_cells), repeats=more)) if more else first
        item = row("generate", backbone, f"{method} {steps}", **rates(args.n_cells, seconds, flops, peak["cpu"]))
        item.update(memory.stop(token), nfe=generated.uns["cellflow_generate"]["function_evaluations_per_condition"])
        item["under_2s"] = "yes" if seconds * 10_000 / args.n_cells < 2.0 else "no"
        item["note"] = f"best of {1 + more}; {args.threads} thread(s)"
        item["note"] += ("" if args.threads == 2 else ", the 2 s target is for 2") + scaled
        rows.append(item)
    mean_seconds, sample_seconds, serial_seconds = decode_seconds(model, args)
    rows[0]["note"] += (
        f"; decoder {mean_seconds:.2f} s + count sampling {sample_seconds - mean_seconds:.2f} s"
        f" (torch's serial gamma-Poisson sampler: {serial_seconds:.2f} s)"
    )
    print(f"  generate {backbone}: " + ", ".join(f"{r['setting']} {r['seconds']:.2f} s" for r in rows), flush=True)
    return rows


def decode_seconds(model, args) -> tuple[float, float, float]:
    """Seconds of the VAE decoder alone (expected counts), with count sampling, and of the baseline sampler.

    The baseline is what cellflow sampled with before: torch's gamma and Poisson samplers
    (serial on a CPU) on the same NB parameters, for ``args.n_cells`` cells.
    """
    import torch

    generator = torch.Generator().manual_seed(args.seed)
    z = torch.randn(args.n_cells, model.config.latent_dim, generator=generator)
    log_library = torch.full((args.n_cells, 1), float(np.log(3000.0)))
    batch = torch.zeros(args.n_cells, 1, dtype=torch.long)
    scale = torch.full_like(z, 0.5)  # posterior sds: sampling draws around the latent first, as generate does
    offset = None  # a condition's gene offsets correct the expected counts, as generate does
    if model.module.gene_offsets is not None:
        offset = torch.zeros(1, len(model.genes)).normal_(0.0, 0.3, generator=generator)
    with torch.no_grad():
        mean_seconds, sample_seconds = (
            best_seconds(
                partial(
                    model.vae.decode,
                    z,
                    log_library,
                    batch,
                    sample=sample,
                    generator=generator,
                    latent_scale=scale,
                    gene_offset=offset,
                ),
                repeats=args.repeats,
            )
            for sample in (False, True)
        )
        px = model.vae.module.generative(z, log_library, batch)["px"]
        mu, theta = px.mu, px.theta.expand_as(px.mu)

        def serial():
            torch.poisson(torch._standard_gamma(theta) * (mu / theta))

        return mean_seconds, sample_seconds, best_seconds(serial, repeats=args.repeats)


def results_section(table: pd.DataFrame, args) -> str:
    """The generation rows for the results page."""
    columns = ["model", "setting", "rows", "seconds", "cells_per_s", "nfe", "under_2s", "peak_mb", "note"]
    generate = table[table["section"] == "generate"]
    return (
        f"{provenance()}\n\nSimulated data with {args.genes} genes, latent 32; `seconds` is one "
        f"`cf.tl.generate` call of {args.n_cells:,} cells, decoding and count sampling included.\n\n"
        f"{results_markdown(generate, columns)}"
    )


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Measure the matmul peak and the generation rows, and print the table."""
    args = parse_args(argv)
    memory = start_run("generate speed", args.threads)
    start = time.perf_counter()
    csv = args.out and args.out / CSV
    rows, peak = matmul_rows(args.repeats, memory, args.quick)
    adata = throughput_data(args.genes, args.seed)
    for backbone in args.backbones:
        model = throughput_model(adata, backbone, args.seed)
        # Generation needs a trained flow; the time of a solver step does not depend on the fit.
        model.train_flow(steps=10, accelerator="cpu", progress_bar=False)
        rows += generation_rows(model, adata, backbone, args, peak, memory)
        save_rows(rows, csv)  # a run cut short keeps what it measured
    check_threads(args.threads)

    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    print(f"\nResults ({time.perf_counter() - start:.0f} s; frac_peak = achieved GFLOP/s / best matmul rate):")
    print(format_table(table))
    if csv is not None:
        save_rows(rows, csv)
        print(f"\nwrote {csv}")
    if args.results_page:
        # One section per gene count: Norman's 500 is the page's first, any other count gets its own.
        name = "generate_speed" if args.genes == 500 else f"generate_speed-{args.genes}"
        write_results_section(name, results_section(table, args))
    return table


if __name__ == "__main__":
    main()
