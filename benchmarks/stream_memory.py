"""Screens larger than memory: simulate a screen to disk and generate cells to disk, in chunks.

What is measured (every row in the same process, peak memory reset per phase; see
``_measure.PeakMemory``):

1. ``simulate``: ``cf.datasets.simulate_perturbseq(--cells, n_genes=--genes, out=..., chunk_size=...)``
   writes the screen (24 singles, 24 doubles, 2 cell types) in chunks.
2. ``generate``: ``cf.tl.generate(model, ..., out=..., chunk_size=...)`` writes ``--cells``
   generated cells (``--conditions`` conditions, an equal share each) in chunks. The model
   (mlp, latent 32, default options) is trained briefly on 3,000 simulated cells of the same
   genes (VAE one epoch, flow 10 steps): the time of a step does not depend on how well the
   flow fits. The solver is euler with 4 steps, the default of a model from ``model.train()``.
3. With ``--in-memory``, the same two calls without ``out``, for comparison: their peak grows
   with the cells, the streamed ones with the chunk.

Columns: wall time, cells/s, ``peak_mb`` (peak resident memory of the phase) and ``added_mb``
(its rise over the phase's start); the note gives the file's size. Files go to ``--workdir``
(default: a temporary folder, removed at the end unless ``--keep``).

Run::

    OMP_NUM_THREADS=2 .venv/bin/python -u benchmarks/stream_memory.py --threads 2 --cells 100000 --in-memory
    OMP_NUM_THREADS=2 .venv/bin/python -u benchmarks/stream_memory.py --threads 2 --cells 1000000

Options: ``--cells`` (default 100,000), ``--genes`` (2,000), ``--chunk-size`` (10,000),
``--format`` (``h5ad`` or ``zarr``), ``--conditions`` (generated conditions, 10),
``--in-memory``, ``--workdir``, ``--keep``, ``--threads``, ``--seed``, ``--out DIR`` (writes
``stream_memory.csv`` as the run goes).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import (  # noqa: E402
    COLUMNS,
    check_threads,
    format_table,
    resolve_threads,
    row,
    save_rows,
    start_run,
    throughput_data,
    throughput_model,
)

CSV = "stream_memory.csv"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000, help="cells simulated, and cells generated")
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--chunk-size", type=int, default=10_000, help="cells written at a time")
    parser.add_argument("--format", choices=("h5ad", "zarr"), default="h5ad")
    parser.add_argument("--conditions", type=int, default=10, help="generated conditions (cells split evenly)")
    parser.add_argument("--in-memory", action="store_true", help="also time both calls without out=, to compare")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the files (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the written files")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="directory to write the CSV file to")
    args = parser.parse_args(argv)
    if args.cells < args.conditions:
        parser.error(f"--cells {args.cells} must be at least --conditions {args.conditions}.")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    resolve_threads(args)
    memory = start_run("stream_memory", args.threads)
    import cellflow  # noqa: F401  (imported before the first phase, so that no phase counts the import)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cellflow-stream-"))
    workdir.mkdir(parents=True, exist_ok=True)
    csv = None if args.out is None else args.out / CSV
    rows: list[dict] = []
    setting = f"{args.cells:,} cells x {args.genes:,} genes, chunk {args.chunk_size:,}"
    model = _model(args)
    # Streamed first: memory freed after an in-memory run may stay with the process and raise later baselines.
    runs = [(_simulate, workdir / f"screen.{args.format}"), (_generate, workdir / f"generated.{args.format}")]
    if args.in_memory:
        runs += [(_simulate, None), (_generate, None)]
    try:
        for run, out in runs:
            rows.append(run(args, model, memory, out, setting))
            save_rows(rows, csv)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    check_threads(args.threads)
    print(format_table(pd.DataFrame(rows).reindex(columns=COLUMNS)))
    if args.keep or args.workdir is not None:
        print(f"files in {workdir}")


def _simulate(args, model, memory, out: Path | None, setting: str) -> dict:
    import cellflow as cf

    token = memory.start()
    start = time.perf_counter()
    adata = cf.datasets.simulate_perturbseq(
        args.cells,
        n_genes=args.genes,
        n_perturbations=24,
        n_combinations=24,
        seed=args.seed,
        out=out,
        chunk_size=args.chunk_size,
        overwrite=True,
    )
    seconds = time.perf_counter() - start
    return _row("simulate", out, setting, adata, seconds, memory.stop(token))


def _model(args):
    """A briefly trained mlp model of the same genes (the time of a step does not depend on the fit)."""
    adata = throughput_data(args.genes, args.seed)
    model = throughput_model(adata, "mlp", args.seed)
    model.train_flow(steps=10, accelerator="cpu", progress_bar=False)
    return model


def _generate(args, model, memory, out: Path | None, setting: str) -> dict:
    import cellflow as cf

    conditions = [c for c in model.setup.conditions if c != model.setup.control][: args.conditions]
    n_cells = args.cells // len(conditions)
    token = memory.start()
    start = time.perf_counter()
    adata = cf.tl.generate(
        model,
        conditions=conditions,
        n_cells=n_cells,
        covariates={"cell_type": "type_0"},
        seed=args.seed,
        method="euler",
        steps=4,
        out=out,
        chunk_size=args.chunk_size,
        overwrite=True,
    )
    seconds = time.perf_counter() - start
    return _row("generate", out, f"{setting}, {len(conditions)} conditions", adata, seconds, memory.stop(token))


def _row(section: str, out: Path | None, setting: str, adata, seconds: float, peak: dict) -> dict:
    if out is None:
        model, note = "in memory", f"{adata.X.nnz:,} non-zeros"
    else:
        model, note = f"to {out.suffix[1:]}", f"file {_size_mb(out):,.0f} MB"
        if adata.isbacked:
            adata.file.close()
    item = row(section, model, setting, rows=adata.n_obs, seconds=seconds, cells_per_s=adata.n_obs / seconds)
    item.update(peak, note=note)
    print(f"  {section} {model}: {seconds:.1f} s, {item['cells_per_s']:,.0f} cells/s, peak {peak['peak_mb']:.0f} MB")
    return item


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


if __name__ == "__main__":
    main()
