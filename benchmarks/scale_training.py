"""How training from disk scales with the number of cells: wall time per stage, cells per second, peak memory.

For each size, in a fresh process (so that its peak resident memory is its own): a screen of
``--genes`` genes is simulated straight to an ``.h5ad`` file in chunks, opened in backed mode
(the counts stay on disk), registered, and trained end to end (VAE from disk through the
block-shuffling loader, one chunked latent pass, flow, reflow); then ``--generate`` cells are
generated to disk when ``cf.tl.generate`` can stream (``out=``). Reported per stage: seconds,
cells (or cell passes) per second and the process's peak RSS after the stage.

Run: ``.venv/bin/python -u benchmarks/scale_training.py --cells 10000 100000 [--genes 2000]
[--vae-epochs N] [--flow-steps N] [--threads 2] [--out DIR] [--results-page]``. Without
``--vae-epochs`` the VAE trains for the library's default length for that size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _results import RESULTS_FLAG, RESULTS_HELP, command_line, write_results_section


def peak_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_size(n_cells: int, args: argparse.Namespace, folder: Path) -> list[dict]:
    """Simulate, train and generate at one size; one row per stage."""
    import anndata as ad
    import torch

    import cellflow as cf

    torch.set_num_threads(args.threads)
    rows = []

    def row(stage, seconds, cells, note=""):
        rows.append(
            {
                "cells": n_cells,
                "stage": stage,
                "seconds": seconds,
                "cells_per_s": cells / seconds if seconds > 0 else float("nan"),
                "us_per_cell": 1e6 * seconds / n_cells,
                "peak_rss_mb": peak_mb(),
                "note": note,
            }
        )

    path = folder / f"screen_{n_cells}.h5ad"
    tic = time.perf_counter()
    cf.datasets.simulate_perturbseq(
        n_cells=n_cells, n_genes=args.genes, n_perturbations=40, n_combinations=40, seed=0, out=path, overwrite=True
    )
    row("simulate to disk", time.perf_counter() - tic, n_cells)

    adata = ad.read_h5ad(path, backed="r")
    cf.pp.setup(adata, perturbation_key="perturbation", control="control")
    model = cf.CellFlow(adata, seed=0)
    train = {"progress_bar": False, "accelerator": "cpu"}
    if args.vae_epochs is not None:
        train["vae_epochs"] = args.vae_epochs
    if args.flow_steps is not None:
        train["flow_steps"] = args.flow_steps
    model.train(**train)
    history = model.history
    epochs = args.vae_epochs if args.vae_epochs is not None else len(history.get("vae_loss", [])) or float("nan")
    row("VAE (from disk) + latent pass", history["vae_seconds"], n_cells * epochs, f"{epochs} epochs; cell passes/s")
    row("flow", history["flow_seconds"], n_cells, f"{history['flow_steps']} steps")
    if "reflow_seconds" in history:
        row("reflow", history["reflow_seconds"], n_cells)
    conditions = [c for c in adata.obs["perturbation"].astype(str).unique() if c != "control"][:5]
    per_condition = max(1, args.generate // len(conditions))
    tic = time.perf_counter()
    try:
        out = folder / f"pred_{n_cells}.h5ad"
        cf.tl.generate(model, conditions=conditions, n_cells=per_condition, seed=0, out=out, overwrite=True)
        row("generate to disk", time.perf_counter() - tic, per_condition * len(conditions))
    except TypeError as error:  # a release without streamed generation
        rows.append({"cells": n_cells, "stage": "generate to disk", "note": f"not run: {error}"})
    adata.file.close()
    return rows


def markdown_table(table: pd.DataFrame) -> str:
    """The rows as a Markdown table (numbers to 4 significant digits; pandas' needs tabulate)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if value != value else f"{value:,.4g}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--vae-epochs", type=int, default=None)
    parser.add_argument("--flow-steps", type=int, default=None)
    parser.add_argument("--generate", type=int, default=100_000, help="cells generated to disk at each size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child process's size
    parser.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument(RESULTS_FLAG, action="store_true", help=RESULTS_HELP)
    args = parser.parse_args()

    if args.one is not None:
        print(json.dumps(one_size(args.one, args, args.folder)))
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="cellflow-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n_cells in args.cells:
        command = [sys.executable, "-u", __file__, "--one", str(n_cells), "--folder", str(out)]
        for flag in ("genes", "vae_epochs", "flow_steps", "generate", "threads"):
            value = getattr(args, flag)
            if value is not None:
                command += [f"--{flag.replace('_', '-')}", str(value)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"size {n_cells} failed")
        rows += json.loads(done.stdout.strip().splitlines()[-1])
        print(pd.DataFrame(rows).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "scale_training.csv", index=False)
    markdown = markdown_table(table)
    print(markdown)
    if getattr(args, RESULTS_FLAG.strip("-").replace("-", "_")):
        write_results_section("scale_training", f"`{command_line()}`\n\n{markdown}")


if __name__ == "__main__":
    main()
