"""Training throughput of cellflow's flow on this machine: cells per second, FLOP rate and peak memory.

What is measured (every number in the same process, at the same torch thread count):

1. ``matmul``: the machine's matrix-multiply rate (``_measure.matmul_rows``: float32 ``torch.matmul``
   of square matrices, 2048 and 4096, on the CPU and, when CUDA is available, on the GPU with
   TF32 off and on, and bfloat16 at 8192). The best CPU (or GPU, for ``--device cuda``) rate is
   the *peak* every ``frac_peak`` divides by; rows in bfloat16 divide by the bfloat16 rate. The
   row ``(1024x256)@(256x512)`` is one multiply shaped like the mlp backbone's widest layer at
   batch 1024: what a model made only of such layers could reach.
2. ``train``: throughput of the flow (cells/s = rows per optimizer step x steps/s) for the
   ``mlp`` and ``set_attention`` backbones with their default options, latent 32, on simulated
   data (3,000 cells, 2 cell types, 24 singles and 24 doubles, ``--genes`` genes; the VAE is
   trained for one epoch, the flow trains on its precomputed latents), at batch 256 (2 groups
   x 128 cells, ``train_flow``'s default), 1024 (16 x 64) and 4096 (32 x 128, when it fits
   ``--budget``); other shapes with ``--batches``. Two rows per size:

   - ``loop``: ``model.train_flow(steps=N)``, wall-clock: Lightning, minibatch sampling and
     pairing included. cells/s is the marginal rate ``rows x (N - 1) / (t(N) - t(1))`` with
     ``N >= 10`` (``--loop-rows`` / rows, capped by ``--budget``): the fixed set-up of a call
     (the Trainer, the design and the population OT pairing; ``setup`` in the note) is left
     out, as a 2,000-step training amortises it.
   - ``bare``: one prepared minibatch (drawn by the training plan's ``GroupIndex`` and paired
     by ``FlowTrainingPlan.pairs``, once), then per step what ``FlowTrainingPlan.training_step``
     computes after pairing (flow times by ``sample_flow_time``, ``plan.encode_groups`` with
     the condition dropout, ``plan.flow.loss``), backward and the plan's AdamW step. The plan
     is :func:`cellflow.train.training_plan`'s, so no line of the loss is copied here. The
     note gives the per-step cost of what ``bare`` leaves out (``prep``: drawing and pairing
     one minibatch).

   With ``--precisions`` (default on ``--device cuda``: all three) each size is also measured
   under bfloat16 autocast (``bf16-mixed``: a bare row and a loop row through
   ``train_flow(precision="bf16-mixed")``) and with ``torch.compile`` of ``plan.flow.loss`` on
   top (``bf16-compile``, bare only), to decide whether mixed precision and compilation pay.

   FLOPs of one step are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix
   products and attention, forward and backward; the optimizer and elementwise work are not
   FLOPs in this count).
3. Peak memory of every phase (``peak_mb``, ``added_mb``; see ``_measure.PeakMemory``); with
   ``--device cuda`` the training rows report ``torch.cuda.max_memory_allocated``.

Run (set the thread count once, for the whole run, so that numpy/scipy's BLAS and torch agree)::

    OMP_NUM_THREADS=2 .venv/bin/python -u benchmarks/train_speed.py --threads 2 [--out DIR] [--results-page]
    OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/train_speed.py --quick      # smoke run: few steps
    OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/train_speed.py --threads 1 --profile
    .venv/bin/python -u benchmarks/train_speed.py --device cuda                  # + bf16 and torch.compile rows

Options: ``--threads`` (default ``OMP_NUM_THREADS``, else all cores), ``--device cpu|cuda``,
``--precisions``, ``--backbones``, ``--batches`` (``groups x cells``, e.g. ``2x128,8x32,16x64``),
``--loop-rows`` (rows per ``loop`` measurement), ``--bare-steps``, ``--repeats``, ``--budget``
(seconds one measurement may take), ``--genes``, ``--seed``, ``--quick`` (2 batch sizes, few
steps, one matmul size), ``--profile`` (torch.profiler top operators of the mlp bare step at the
largest batch), ``--out DIR`` (writes ``train_speed.csv`` as the run goes, so a run cut short
keeps what it measured), ``--results-page`` (writes the table into ``docs/results.md``).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

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
    repeat,
    resolve_threads,
    results_markdown,
    row,
    save_rows,
    start_run,
    throughput_data,
    throughput_model,
)
from _results import provenance, write_results_section  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed", "bf16-compile")
BACKBONES = ("mlp", "set_attention")
CSV = "train_speed.csv"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the training rows")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument(
        "--batches", default=None, help="groups x cells per training batch (default 2x128,16x64,32x128; quick: 2)"
    )
    parser.add_argument("--loop-rows", type=int, default=51_200, help="rows per loop measurement (256 x 200)")
    parser.add_argument(
        "--precisions",
        default=None,
        help="training arithmetic to measure: 32-true, bf16-mixed (autocast; also a loop row), bf16-compile "
        "(autocast + torch.compile, bare only); default 32-true on the CPU, all three with --device cuda",
    )
    parser.add_argument("--bare-steps", type=int, default=20, help="bare steps per timed block")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds one loop measurement may take")
    parser.add_argument("--genes", type=int, default=2000, help="genes of the simulated data")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 batch sizes, few steps")
    parser.add_argument("--profile", action="store_true", help="print the top operators of the mlp bare step")
    args = parser.parse_args(argv)
    resolve_threads(args)
    if args.quick:
        args.loop_rows, args.bare_steps, args.repeats = 2560, 3, 1
    if args.batches is None:
        args.batches = "2x128,16x64" if args.quick else "2x128,16x64,32x128"
    try:
        args.batches = [(int(g), int(c)) for g, c in (item.split("x") for item in args.batches.split(","))]
    except ValueError:
        parser.error(f"--batches {args.batches!r}: give groups x cells pairs, e.g. 8x32,16x64.")
    if min(min(pair) for pair in args.batches) < 1:
        parser.error(f"--batches {args.batches}: groups and cells must be at least 1.")
    if args.precisions is None:
        args.precisions = ",".join(PRECISIONS) if args.device == "cuda" else "32-true"
    args.precisions = args.precisions.split(",")
    unknown = set(args.precisions) - set(PRECISIONS)
    if unknown or "32-true" not in args.precisions:
        parser.error(f"--precisions {args.precisions}: give 32-true and any of {PRECISIONS[1:]}.")
    args.backbones = args.backbones.split(",")
    unknown = set(args.backbones) - set(BACKBONES)
    if unknown:
        parser.error(f"--backbones: {sorted(unknown)} not measured here; choose from {', '.join(BACKBONES)}.")
    if min(args.threads, args.bare_steps, args.repeats) < 1:
        parser.error("--threads, --bare-steps and --repeats must be at least 1.")
    return args


# ---------------------------------------------------------------------------------------------- bare steps
class BareSteps:
    """Optimizer steps on one fixed minibatch of a model's training plan (the public training API).

    The design and the latents of the training cells are built once per model; every
    :meth:`prepare` builds the training plan of one minibatch shape.
    """

    def __init__(self, model, device: str, seed: int) -> None:
        import cellflow as cf
        from cellflow.pp._setup import get_setup, setup_conditions
        from cellflow.train import build_training_design

        self.model, self.device, self.seed = model, device, seed
        adata = model.adata
        setup = get_setup(adata)
        self.design = build_training_design(
            adata, setup, model.codec, setup_conditions(adata, setup), over_time=model.module.over_time
        )
        self.latent = cf.tl.encode(model, adata, copy=True).obsm["X_cellflow"]

    def prepare(self, groups: int, cells: int, precision: str = "32-true"):
        """One optimizer step on a fixed minibatch, as ``FlowTrainingPlan.training_step`` computes it.

        ``precision``: ``"32-true"``; ``"bf16-mixed"`` runs the condition encoder and the loss
        under bfloat16 autocast (what Lightning's ``precision="bf16-mixed"`` does);
        ``"bf16-compile"`` also compiles ``plan.flow.loss`` with ``torch.compile``.

        Returns
        -------
        step, n_rows, prep_seconds
            ``step()`` runs forward, backward and AdamW; ``n_rows`` rows per step;
            ``prep_seconds`` what drawing and pairing one minibatch costs (left out of ``step``).
        """
        import torch

        from cellflow.flow import sample_flow_time
        from cellflow.train import FlowTrainingConfig, resolve_coupling, training_plan

        module = self.model.module
        config = resolve_coupling(
            FlowTrainingConfig(groups_per_batch=groups, cells_per_group=cells, precision=_lightning(precision)), module
        )
        plan, index = training_plan(module, self.design, self.latent, config, seed=self.seed)
        plan = plan.to(self.device).train()
        generator = torch.Generator().manual_seed(self.seed)

        def draw():
            picked = torch.randperm(index.n_groups, generator=generator)[: min(groups, index.n_groups)]
            batch = tuple(t.to(self.device) for t in index.sample(picked, cells, generator))
            with torch.no_grad():
                return plan.pairs(batch)  # the training step's own sampling and pairing

        prep_seconds = best_seconds(draw, repeats=3, device=self.device)
        z0, z1, batch_group = draw()
        optimizer = plan.configure_optimizers()["optimizer"]
        loss_fn = torch.compile(plan.flow.loss) if precision.endswith("compile") else plan.flow.loss
        autocast = torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=precision != "32-true")

        def step():
            # What FlowTrainingPlan.training_step computes after pairing, then AdamW.
            optimizer.zero_grad(set_to_none=True)
            s = sample_flow_time(z1.shape[0], device=z1.device)
            with autocast:
                cond = plan.encode_groups(batch_group, config.condition_dropout)
                loss = loss_fn(z0, z1, s, cond)
            loss.backward()
            optimizer.step()

        step()  # warm-up (allocations, optimizer state, compilation)
        return step, len(batch_group), prep_seconds


def _lightning(precision: str) -> str:
    """The Lightning precision a measured precision runs under."""
    return "bf16-mixed" if precision.startswith("bf16") else precision


# ---------------------------------------------------------------------------------------------- rows
def training_rows(model, backbone: str, args, peak: dict[str, float], memory: PeakMemory) -> tuple[list[dict], dict]:
    """Loop and bare-step rows for every batch size; returns them and the prepared bare steps (for profiling)."""
    rows, steps = [], {}
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    # One throw-away call first, so that no size pays for first-call costs (lazy imports, allocator growth);
    # it also gives the model the reference and shifts that the bare steps' plans need.
    model.train_flow(steps=1, accelerator=accelerator, progress_bar=False)
    bare_steps = BareSteps(model, args.device, args.seed)
    for groups, cells in args.batches:
        size = f"{groups}x{cells}"

        def train(n: int, groups=groups, cells=cells, precision="32-true") -> float:
            start = time.perf_counter()
            model.train_flow(
                steps=n,
                groups_per_batch=groups,
                cells_per_group=cells,
                precision=precision,
                accelerator=accelerator,
                progress_bar=False,
            )
            return time.perf_counter() - start

        setup_seconds = train(1)  # the set-up of a train_flow call, plus one step
        step, n_rows, prep_seconds = bare_steps.prepare(groups, cells)
        first = best_seconds(step, repeats=1, device=args.device)
        if 10 * first > args.budget:  # the loop needs 10 steps for a steady rate
            rows.append(row("train", backbone, f"bare {size}", rows=n_rows, note=f"skipped: one step {first:.1f} s"))
            continue
        flops, _ = count_flops(step)
        n_bare = max(1, min(args.bare_steps, int(args.budget / (args.repeats * first))))
        token = memory.start(args.device)
        block = best_seconds(partial(repeat, step, n_bare), repeats=args.repeats, device=args.device)
        bare = row("train", backbone, f"bare {size}", **rates(n_rows, block / n_bare, flops, peak[args.device]))
        bare.update(memory.stop(token), note=f"+ prep {1e3 * prep_seconds:.1f} ms/step (sampling, pairing)")
        steps[(backbone, n_rows)] = step

        n_steps = int(max(10, min(round(args.loop_rows / n_rows), args.budget // max(block / n_bare, 1e-9))))
        token = memory.start(args.device)
        seconds = train(n_steps)
        per_step = max(seconds - setup_seconds, 1e-9) / (n_steps - 1)
        loop = row("train", backbone, f"loop {size}", **rates(n_rows, per_step, flops, peak[args.device]))
        loop.update(memory.stop(token), note=f"{n_steps} steps in {seconds:.1f} s; setup {setup_seconds:.1f} s")
        rows += [loop, bare]
        print(
            f"  train {backbone} {size}: loop {loop['cells_per_s']:.0f} cells/s, bare {bare['cells_per_s']:.0f}",
            flush=True,
        )
        for precision in args.precisions[1:]:
            rows += precision_rows(bare_steps, backbone, (groups, cells), precision, flops, n_steps, train, args, peak)
    model.module.cpu().eval()
    return rows, steps


def precision_rows(bare_steps, backbone, batch, precision, flops, n_steps, train, args, peak) -> list[dict]:
    """Bare (and, for a precision that train_flow takes, loop) rows in reduced precision; same FLOPs as float32."""
    groups, cells = batch
    size = f"{groups}x{cells}"
    peak_rate = peak.get(f"{args.device}-bf16", peak[args.device])
    start = time.perf_counter()
    step, n_rows, _ = bare_steps.prepare(groups, cells, precision=precision)
    warmup = time.perf_counter() - start  # includes torch.compile's compilation
    first = best_seconds(step, repeats=1, device=args.device)
    n_bare = max(1, min(args.bare_steps, int(args.budget / (args.repeats * max(first, 1e-6)))))
    block = best_seconds(partial(repeat, step, n_bare), repeats=args.repeats, device=args.device)
    bare = row("train", backbone, f"bare {size} {precision}", **rates(n_rows, block / n_bare, flops, peak_rate))
    against = "the bf16 matmul peak" if f"{args.device}-bf16" in peak else "the float32 peak (no bf16 peak here)"
    bare["note"] = f"frac of {against}; first step + prepare {warmup:.1f} s"
    rows = [bare]
    if precision in ("bf16-mixed", "16-mixed"):  # what model.train_flow(precision=...) runs
        setup_seconds = train(1, precision=precision)
        seconds = train(n_steps, precision=precision)
        per_step = max(seconds - setup_seconds, 1e-9) / (n_steps - 1)
        loop = row("train", backbone, f"loop {size} {precision}", **rates(n_rows, per_step, flops, peak_rate))
        loop["note"] = f"{n_steps} steps in {seconds:.1f} s; Lightning precision={precision!r}"
        rows.insert(0, loop)
    print(
        f"  train {backbone} {size} {precision}: " + ", ".join(f"{r['setting']} {r['cells_per_s']:.0f}" for r in rows)
    )
    return rows


def profile_step(step, label: str, n_steps: int = 5) -> None:
    """Print the top operators (self CPU time) of ``n_steps`` bare steps."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n_steps):
            step()
    print(f"\ntorch.profiler, {label}, {n_steps} steps, top operators by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def results_section(table: pd.DataFrame, peak: dict[str, float], args) -> str:
    """The training rows for the results page, with the matmul peak they are measured against."""
    rates_ = ", ".join(f"{device} {rate:.1f} GFLOP/s" for device, rate in peak.items())
    columns = ["model", "setting", "rows", "cells_per_s", "gflop_per_s", "frac_peak", "peak_mb", "note"]
    train = table[table["section"] == "train"]
    return (
        f"{provenance()}\n\nMatmul peak (`frac_peak` divides by it): {rates_}; simulated data with "
        f"{args.genes} genes, latent 32.\n\n{results_markdown(train, columns)}"
    )


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Measure the matmul peak and the training rows, and print the table."""
    args = parse_args(argv)
    import torch

    memory = start_run("train speed", args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here.")
    start = time.perf_counter()
    csv = args.out and args.out / CSV
    rows, peak = matmul_rows(args.repeats, memory, args.quick)
    steps = {}
    adata = throughput_data(args.genes, args.seed)
    for backbone in args.backbones:
        model = throughput_model(adata, backbone, args.seed)
        backbone_rows, backbone_steps = training_rows(model, backbone, args, peak, memory)
        rows += backbone_rows
        steps |= backbone_steps
        save_rows(rows, csv)  # a run cut short keeps what it measured
    check_threads(args.threads)

    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    print(f"\nResults ({time.perf_counter() - start:.0f} s; frac_peak = achieved GFLOP/s / best matmul rate):")
    print(format_table(table))
    if csv is not None:
        save_rows(rows, csv)
        print(f"\nwrote {csv}")
    if args.results_page:
        write_results_section("train_speed", results_section(table, peak, args))
    if args.profile:
        mlp = {n_rows: step for (backbone, n_rows), step in steps.items() if backbone == "mlp"}
        if mlp:
            largest = max(mlp)
            profile_step(mlp[largest], f"mlp bare step, batch {largest}")
    return table


if __name__ == "__main__":
    main()
