"""How training from disk scales with the number of cells: wall time per stage, cells per second, peak memory.

For each size, in a fresh process: a screen of ``--genes`` genes is simulated straight to an
``.h5ad`` file in chunks, opened in backed mode (the counts stay on disk), registered, trained end
to end (VAE from disk through the block-shuffling loader, one chunked latent pass, flow, reflow)
and saved; the screen's file is then removed. Then, in another fresh process, as a user's
generation run would: the saved model is loaded and as many cells as the screen has (or
``--generate``) are generated to disk (``out=``). Reported per stage: seconds, cells (or cell
passes) per second, the peak RSS of its phase (simulation, training as a whole, loading plus
generation; the kernel's high-water mark reset per phase) and of its process so far.

Run: ``.venv/bin/python -u benchmarks/scale_training.py --cells 10000 100000 1000000 [--genes 2000]
[--vae-epochs N] [--flow-steps N] [--generate N] [--threads 2] [--out DIR] [--results-page]``. Without
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


def stage_row(n_cells: int, stage: str, seconds: float, cells: float, phase: dict, note: str = "") -> dict:
    """One row of the table: a stage's time, rate and memory (its phase's peak, the process's peak so far)."""
    return {
        "cells": n_cells,
        "stage": stage,
        "seconds": seconds,
        "cells_per_s": cells / seconds if seconds > 0 else float("nan"),
        "us_per_cell": 1e6 * seconds / n_cells,
        "phase_peak_mb": phase.get("peak_mb", float("nan")),
        "process_peak_mb": peak_mb(),
        "note": note,
    }


def one_size(n_cells: int, args: argparse.Namespace, folder: Path) -> list[dict]:
    """Simulate to disk and train from it at one size, then save the model; one row per stage."""
    import anndata as ad
    import torch
    from _measure import PeakMemory

    import cellflow as cf

    torch.set_num_threads(args.threads)
    memory, rows = PeakMemory(), []
    path = folder / f"screen_{n_cells}.h5ad"
    phase, tic = memory.start(), time.perf_counter()
    cf.datasets.simulate_perturbseq(
        n_cells=n_cells, n_genes=args.genes, n_perturbations=40, n_combinations=40, seed=0, out=path, overwrite=True
    )
    seconds, simulated = time.perf_counter() - tic, memory.stop(phase)
    rows.append(stage_row(n_cells, "simulate to disk", seconds, n_cells, simulated))

    adata = ad.read_h5ad(path, backed="r")
    cf.pp.setup(adata, perturbation_key="perturbation", control="control")
    model = cf.CellFlow(adata, seed=0)
    train = {"progress_bar": False, "accelerator": "cpu"}
    if args.vae_epochs is not None:
        train["vae_epochs"] = args.vae_epochs
    if args.flow_steps is not None:
        train["flow_steps"] = args.flow_steps
    phase = memory.start()
    model.train(**train)
    trained = memory.stop(phase)  # one phase for the whole training: its rows share the peak
    history = model.history
    epochs = len(history.get("vae_loss", [])) if args.vae_epochs is None else args.vae_epochs
    note = f"{epochs} epochs ({-(-n_cells // 128) * epochs:,} steps); cell passes/s"
    rows.append(
        stage_row(n_cells, "VAE (from disk) + latent pass", history["vae_seconds"], n_cells * epochs, trained, note)
    )
    rows.append(stage_row(n_cells, "flow", history["flow_seconds"], n_cells, trained, f"{history['flow_steps']} steps"))
    if "reflow_seconds" in history:
        rows.append(stage_row(n_cells, "reflow", history["reflow_seconds"], n_cells, trained))
    model.save(folder / f"model_{n_cells}", overwrite=True)
    adata.file.close()
    path.unlink()  # the screen is not needed past training (7.9 GB at 1M cells)
    return rows


def generate_from(model_dir: Path, n_cells: int, args: argparse.Namespace) -> list[dict]:
    """Load a saved model in this fresh process and generate ``--generate`` cells to disk: a user's generation run."""
    import torch
    from _measure import PeakMemory

    import cellflow as cf

    torch.set_num_threads(args.threads)
    memory = PeakMemory()
    phase = memory.start()
    model = cf.CellFlow.load(model_dir)
    conditions = list(model.codec.tokens)[:5]
    per_condition = max(1, (args.generate or n_cells) // len(conditions))
    tic = time.perf_counter()
    out = model_dir.with_name(f"pred_{n_cells}.h5ad")
    cf.tl.generate(model, conditions=conditions, n_cells=per_condition, seed=0, out=out, overwrite=True)
    seconds = time.perf_counter() - tic
    made = per_condition * len(conditions)
    note = f"{made:,} cells of {len(conditions)} singles, a fresh process that loads the model"
    row = stage_row(n_cells, "generate to disk", seconds, made, memory.stop(phase), note)
    row["us_per_cell"] = 1e6 * seconds / made
    out.unlink()
    return [row]


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
    parser.add_argument("--generate", type=int, default=None, help="cells generated to disk (default: the screen's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child process's size
    parser.add_argument("--generate-from", type=int, default=None, help=argparse.SUPPRESS)  # a child's size
    parser.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument(RESULTS_FLAG, action="store_true", help=RESULTS_HELP)
    args = parser.parse_args()

    if args.one is not None:
        print(json.dumps(one_size(args.one, args, args.folder)))
        return
    if args.generate_from is not None:
        print(json.dumps(generate_from(args.folder / f"model_{args.generate_from}", args.generate_from, args)))
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="cellflow-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n_cells in args.cells:
        for mode in ("--one", "--generate-from"):
            command = [sys.executable, "-u", __file__, mode, str(n_cells), "--folder", str(out)]
            for flag in ("genes", "vae_epochs", "flow_steps", "generate", "threads"):
                value = getattr(args, flag)
                if value is not None:
                    command += [f"--{flag.replace('_', '-')}", str(value)]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"size {n_cells} failed ({mode})")
            rows += json.loads(done.stdout.strip().splitlines()[-1])
            print(pd.DataFrame(rows).to_string(index=False), flush=True)
            pd.DataFrame(rows).to_csv(out / "scale_training.csv", index=False)
    table = pd.DataFrame(rows)
    table.to_csv(out / "scale_training.csv", index=False)
    markdown = markdown_table(table)
    print(markdown)
    if getattr(args, RESULTS_FLAG.strip("-").replace("-", "_")):
        write_results_section("scale_training", f"`{command_line()}`\n\n{markdown}")


if __name__ == "__main__":
    main()
