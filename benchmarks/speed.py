"""Speed, memory and few-step quality of cellflow on this machine, in one run and one table.

What is measured (every number in the same process, at the same torch thread count):

1. ``matmul``: the machine's float32 matrix-multiply rate, ``torch.matmul`` of square
   matrices (2048 and 4096; best of several repeats), on the CPU and, when CUDA is
   available, on the GPU (with TF32 off and on, and bfloat16 at 8192). The best CPU (or GPU,
   for ``--device cuda``) rate is the *peak* every ``frac_peak`` divides by; rows in bfloat16
   divide by the bfloat16 rate. The row ``(1024x256)@(256x512)``
   gives the rate of one multiply shaped like the mlp backbone's widest layer at batch 1024:
   what a model made only of such layers could reach.
2. ``train``: throughput of the flow (cells/s = rows per optimizer step x steps/s) for the
   ``mlp`` and ``set_attention`` backbones with their default options, latent 32, on
   simulated data (2 cell types, 48 perturbations, ``--genes`` genes), at batch 256
   (2 groups x 128 cells, ``train_flow``'s default), 1024 (16 x 64) and 4096 (32 x 128, when
   it fits ``--budget``); other shapes with ``--batches``. Two rows per size:

   - ``loop``: ``model.train_flow(steps=N)`` on the VAE's precomputed latents, wall-clock,
     Lightning, minibatch sampling and OT pairing included. cells/s is the marginal rate
     ``rows x (N - 1) / (t(N) - t(1))`` with ``N >= 10`` (``--loop-rows`` / rows, capped by
     ``--budget``): the fixed set-up of a call (the Trainer and the design, ``setup`` in the
     note) is left out, as a 2,000-step training amortises it.
   - ``bare``: forward + backward + AdamW step of the condition encoder and backbone on one
     prepared batch (sampled and OT-paired once by ``FlowModule.pairs``), then the arithmetic
     of ``FlowModule.training_step`` (condition dropout included). The note gives the per-step
     cost of what ``bare`` leaves out (``prep``: sampling and OT pairing of one batch).

   With ``--precisions`` (default on ``--device cuda``: all three) each size is also measured
   under bfloat16 autocast (``bf16-mixed``: a bare row and a loop row through
   ``train_flow(precision="bf16-mixed")``) and with ``torch.compile`` on top (``bf16-compile``,
   bare only), to decide whether mixed precision and compilation pay.

   FLOPs of one step are counted with ``torch.utils.flop_counter.FlopCounterMode``
   (matrix products and attention, forward and backward; the optimizer and elementwise
   work are not FLOPs in this count).
3. ``generate``: ``cf.tl.generate`` of 10,000 cells (``--n-cells``) of one condition, count
   decoding and sampling included, with the default solver (heun, 8 steps) and with euler
   1, 2 and 4 steps; best of ``--repeats``. The issue's target: 10,000 cells in under 2 s on
   2 CPU cores (column ``under_2s``; it only speaks for the target when ``--threads 2``).
   Sampling the counts costs in proportion to cells x genes (the note of the heun row splits
   off the decoder and the sampling), so the answer depends on ``--genes`` (default 2,000).
4. Peak memory of every phase: ``peak_mb`` is the highest resident set size during the
   phase, ``added_mb`` its rise over the phase's start. On Linux the kernel's high-water mark
   is reset before each phase (``echo 5 > /proc/self/clear_refs``, then ``VmHWM`` of
   ``/proc/self/status``); elsewhere ``ru_maxrss`` is used, which only ever grows (noted in
   the header). With ``--device cuda`` the training rows report ``torch.cuda.max_memory_allocated``.
5. ``quality``: on the Norman 2019 split of ``benchmarks/norman_combinations.py`` (5 held-out
   doubles), cellflow is trained once with its defaults (``--flow-steps``), and each double is
   generated with euler 1, 2, 4, 8, 16 steps, heun 8 and the adaptive dopri5 (``nfe`` = its
   function evaluations), scored by energy distance (lower is better) and Pearson delta on the
   top-20 genes (higher is better), mean over the 5 doubles. Then ``model.reflow(rounds=1)``
   and the same list again; with ``--distill K`` one more reflow round distilled to K Euler
   steps. The additive baseline and the noise floor (half of the real cells predicting the
   other half) are scored on the same rows. ``--skip-quality`` skips it (it takes several
   minutes on a CPU).

Reading ``frac_peak``: achieved FLOP/s divided by the best big-matmul rate. 1.0 would
mean every cycle went into large, well-shaped float32 matrix products. Small layers (a
latent of 32, a width of 256) cannot reach it: the ``matmul@mlp-shape`` row shows the
ceiling for one layer of that shape, and elementwise work (LayerNorm, GELU, modulation,
AdamW), Python and framework overhead take time without adding FLOPs.

Run (set the thread count once, for the whole run, so that numpy/scipy's BLAS and torch agree)::

    OMP_NUM_THREADS=2 .venv/bin/python -u benchmarks/speed.py --threads 2 [--out DIR]
    .venv/bin/python -u benchmarks/speed.py --quick            # a smoke run: few steps, no quality
    OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/speed.py --threads 1 --distill 1 --profile

Options: ``--threads`` (default ``OMP_NUM_THREADS``, else all cores), ``--device cpu|cuda``
(training rows), ``--precisions``, ``--backbones``, ``--batches`` (``groups x cells``, e.g. ``2x128,8x32,16x64``),
``--loop-rows`` (rows per ``loop`` measurement), ``--bare-steps``, ``--repeats``,
``--budget`` (seconds one measurement may take), ``--genes``, ``--n-cells``, ``--flow-steps``,
``--vae-epochs``, ``--reflow-steps``, ``--distill``, ``--data``, ``--skip-quality``, ``--skip-speed``
(matmul and quality only), ``--skip-training`` (no training rows: matmul, generation and
quality), ``--profile`` (torch.profiler top operators of the mlp bare step at
the largest batch), ``--out DIR`` (writes ``speed.csv`` as the run goes, so a run cut short
keeps what it measured; the quality rows also to ``quality_partial/``).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from norman_combinations import DEFAULT_DATA, N_DOUBLES, load_norman  # noqa: E402

COLUMNS = [
    "section",
    "model",
    "setting",
    "rows",
    "seconds",
    "cells_per_s",
    "gflop",
    "gflop_per_s",
    "frac_peak",
    "peak_mb",
    "added_mb",
    "nfe",
    "energy",
    "pearson_top20",
    "under_2s",
    "note",
]
QUALITY_SOLVERS = [("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("euler", 16), ("heun", 8), ("dopri5", 1)]
GENERATION_SOLVERS = [("heun", 8), ("euler", 1), ("euler", 2), ("euler", 4)]
PRECISIONS = ("32-true", "bf16-mixed", "bf16-compile")
THROUGHPUT_PERTURBATIONS = 24  # 24 singles + 24 doubles in 2 cell types: 96 groups, enough for 32 x 128


# ---------------------------------------------------------------------------------------------- options
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or all)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the training rows")
    parser.add_argument("--backbones", default="mlp,set_attention")
    parser.add_argument("--batches", default="2x128,16x64,32x128", help="groups x cells per training batch")
    parser.add_argument("--loop-rows", type=int, default=51_200, help="rows per loop measurement (256 x 200)")
    parser.add_argument(
        "--precisions",
        default=None,
        help="training arithmetic to measure: 32-true, bf16-mixed (autocast; also a loop row), bf16-compile "
        "(autocast + torch.compile, bare only); default 32-true on the CPU, all three with --device cuda",
    )
    parser.add_argument("--bare-steps", type=int, default=20, help="bare steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks / generate calls; best counts")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds one loop measurement may take")
    parser.add_argument("--genes", type=int, default=2000, help="genes of the simulated throughput data")
    parser.add_argument("--n-cells", type=int, default=10_000, help="cells generated per generation row")
    parser.add_argument("--flow-steps", type=int, default=2000, help="flow steps of the quality model")
    parser.add_argument("--vae-epochs", type=int, default=None, help="VAE epochs of the quality model (cellflow's)")
    parser.add_argument("--reflow-steps", type=int, default=1000, help="steps per reflow round (cellflow's 1000)")
    parser.add_argument("--distill", type=int, default=0, help="K > 0: also reflow + distill to K Euler steps")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Norman/McFaline-Figueroa subset")
    parser.add_argument("--skip-quality", action="store_true", help="skip the Norman quality part")
    parser.add_argument("--skip-speed", action="store_true", help="skip training and generation throughput")
    parser.add_argument("--skip-training", action="store_true", help="skip training throughput (generation only)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: few steps, 2 batch sizes, 2,000 cells, no quality"
    )
    parser.add_argument("--profile", action="store_true", help="print the top operators of the mlp bare step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="directory to write speed.csv to")
    args = parser.parse_args(argv)
    if args.threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        args.threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or cores
    if args.quick:
        args.batches, args.loop_rows, args.bare_steps, args.repeats = "2x128,16x64", 2560, 3, 1
        args.n_cells = min(args.n_cells, 2000)
        args.skip_quality = True
    try:
        args.batches = [(int(g), int(c)) for g, c in (item.split("x") for item in args.batches.split(","))]
    except ValueError:
        parser.error(f"--batches {args.batches!r}: give groups x cells pairs, e.g. 8x32,16x64.")
    if min(min(pair) for pair in args.batches) < 1:
        parser.error(f"--batches {args.batches}: groups and cells must be at least 1.")
    if args.precisions is None:
        args.precisions = "32-true,bf16-mixed,bf16-compile" if args.device == "cuda" else "32-true"
    args.precisions = args.precisions.split(",")
    unknown = set(args.precisions) - set(PRECISIONS)
    if unknown or "32-true" not in args.precisions:
        parser.error(f"--precisions {args.precisions}: give 32-true and any of {PRECISIONS[1:]}.")
    args.backbones = args.backbones.split(",")
    unknown = set(args.backbones) - {"mlp", "set_attention"}
    if unknown:
        parser.error(f"--backbones: {sorted(unknown)} not measured here; choose from mlp, set_attention.")
    if min(args.threads, args.bare_steps, args.repeats, args.n_cells, args.flow_steps) < 1 or args.distill < 0:
        parser.error("--threads, --bare-steps, --repeats, --n-cells and --flow-steps must be >= 1; --distill >= 0.")
    return args


# ---------------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of a phase: resident set (Linux high-water mark, reset per phase) or CUDA allocations."""

    def __init__(self) -> None:
        self.resettable = _reset_high_water_mark() and _high_water_mark_resets()
        self.note = (
            "peak RSS per phase (VmHWM, reset through /proc/self/clear_refs)"
            if self.resettable
            else "peak RSS since the process started (ru_maxrss; this system cannot reset it per phase)"
        )

    def start(self, device: str = "cpu") -> tuple[str, float]:
        """Begin a phase; returns the token :meth:`stop` needs."""
        import torch

        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return device, torch.cuda.memory_allocated() / 2**20
        if self.resettable:
            _reset_high_water_mark()
        return device, _status_mb("VmRSS") if self.resettable else _maxrss_mb()

    def stop(self, token: tuple[str, float]) -> dict[str, float]:
        """End a phase: ``peak_mb`` and ``added_mb`` (peak minus the phase's start)."""
        import torch

        device, start = token
        if device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = _status_mb("VmHWM") if self.resettable else _maxrss_mb()
        return {"peak_mb": peak, "added_mb": peak - start}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _high_water_mark_resets() -> bool:
    """Check that the reset works here: touch 200 MB, free it, reset, and see VmHWM fall back."""
    block = np.ones(200 * 2**20 // 8)
    high = _status_mb("VmHWM")
    del block
    _reset_high_water_mark()
    return _status_mb("VmHWM") < high - 100


# ---------------------------------------------------------------------------------------------- helpers
def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _best_seconds(fn, *, repeats: int, device: str = "cpu") -> float:
    """Best wall-clock time of ``repeats`` calls of ``fn`` (the least disturbed by other work)."""
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def count_flops(fn) -> tuple[int, object]:
    """FLOPs of one call of ``fn`` (matrix products and attention, forward and backward), and what it returned."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter:
        result = fn()
    return counter.get_total_flops(), result


def _cpu_attention_flops() -> dict:
    # FlopCounterMode knows the CUDA attention kernels but not the CPU one (torch 2.13 counts it as 0).
    import torch
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


def _repeat(fn, times: int) -> None:
    for _ in range(times):
        fn()


def _row(section: str, model: str, setting: str, **values) -> dict:
    return {"section": section, "model": model, "setting": setting, **values}


def _rates(rows: float, seconds: float, flops: float, peak_gflops: float) -> dict:
    """cells/s, GFLOP of the unit of work and the achieved rate against the peak."""
    gflop_per_s = flops / seconds / 1e9
    return {
        "rows": rows,
        "seconds": seconds,
        "cells_per_s": rows / seconds,
        "gflop": flops / 1e9,
        "gflop_per_s": gflop_per_s,
        "frac_peak": gflop_per_s / peak_gflops,
    }


# ---------------------------------------------------------------------------------------------- 1. matmul
def matmul_rows(repeats: int, memory: PeakMemory, quick: bool) -> tuple[list[dict], dict[str, float]]:
    """The float32 matmul rate on the CPU (and GPU); returns rows and the peak per device."""
    import torch

    rows, peak = [], {}
    sizes = (2048,) if quick else (2048, 4096)
    for size in sizes:
        token = memory.start()
        seconds, flops = _matmul_seconds(size, size, size, "cpu", max(5, repeats))
        rows.append(
            _row("matmul", "float32", f"{size}^3 cpu", seconds=seconds, gflop=flops / 1e9, **memory.stop(token))
        )
        rows[-1]["gflop_per_s"] = flops / seconds / 1e9
        peak["cpu"] = max(peak.get("cpu", 0.0), rows[-1]["gflop_per_s"])
    seconds, flops = _matmul_seconds(1024, 256, 512, "cpu", 20)
    rows.append(_row("matmul", "float32", "(1024x256)@(256x512) cpu", seconds=seconds, gflop=flops / 1e9))
    rows[-1].update(gflop_per_s=flops / seconds / 1e9, note="mlp-shape: its widest layer at batch 1024")
    if torch.cuda.is_available():
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            seconds, flops = _matmul_seconds(4096, 4096, 4096, "cuda", 10)
            rows.append(_row("matmul", "float32", f"4096^3 cuda tf32={'on' if tf32 else 'off'}", seconds=seconds))
            rows[-1].update(gflop=flops / 1e9, gflop_per_s=flops / seconds / 1e9)
            if not tf32:
                peak["cuda"] = rows[-1]["gflop_per_s"]
        torch.backends.cuda.matmul.allow_tf32 = False  # the training rows run in true float32, torch's default
        rows[-1]["note"] = "training rows run with TF32 off (torch's default); peak = tf32=off"
        seconds, flops = _matmul_seconds(8192, 8192, 8192, "cuda", 10, dtype=torch.bfloat16)
        rows.append(_row("matmul", "bfloat16", "8192^3 cuda", seconds=seconds, gflop=flops / 1e9))
        rows[-1].update(gflop_per_s=flops / seconds / 1e9, note="the peak of the bf16 training rows")
        peak["cuda-bf16"] = rows[-1]["gflop_per_s"]
    for row in rows:
        device = "cpu" if "cuda" not in row["setting"] else "cuda-bf16" if row["model"] == "bfloat16" else "cuda"
        row["frac_peak"] = row["gflop_per_s"] / peak[device]
    return rows, peak


def _matmul_seconds(m: int, k: int, n: int, device: str, repeats: int, dtype=None) -> tuple[float, int]:
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(device, dtype)
    b = torch.randn(k, n, generator=generator).to(device, dtype)
    out = torch.empty(m, n, device=device, dtype=a.dtype)
    torch.matmul(a, b, out=out)  # warm-up
    # Several products per timed call keep small shapes above the timer's resolution.
    inner = max(1, int(2e9 // (2 * m * k * n)))

    def run():
        for _ in range(inner):
            torch.matmul(a, b, out=out)

    return _best_seconds(run, repeats=repeats, device=device) / inner, 2 * m * k * n


# ---------------------------------------------------------------------------------------------- 2. training
def throughput_data(n_genes: int, seed: int):
    """Simulated Perturb-seq cells registered for cellflow (96 training groups)."""
    import cellflow as cf

    adata = cf.datasets.simulate_perturbseq(
        3000,
        n_genes=n_genes,
        n_perturbations=THROUGHPUT_PERTURBATIONS,
        n_combinations=THROUGHPUT_PERTURBATIONS,
        seed=seed,
    )
    cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    return adata


def throughput_model(adata, backbone: str, seed: int):
    """A CellFlow with a (briefly) trained VAE, so the flow trains on precomputed latents."""
    import cellflow as cf

    model = cf.CellFlow(adata, backbone=backbone, latent_dim=32, seed=seed)
    model.train_vae(epochs=1, accelerator="cpu", progress_bar=False)
    return model


def training_rows(model, backbone: str, args, peak: dict[str, float], memory: PeakMemory) -> tuple[list[dict], dict]:
    """Loop and bare-step rows for every batch size; returns them and the prepared bare steps (for profiling)."""
    rows, steps = [], {}
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    # One throw-away call first, so that no size pays for first-call costs (lazy imports, allocator growth).
    model.train_flow(steps=1, accelerator=accelerator, progress_bar=False)
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

        setup_seconds = train(1)  # the set-up of a train_flow call, plus one step; also builds the module
        step, n_rows, prep_seconds = prepare_bare_step(model, groups, cells, args.device, args.seed)
        first = _best_seconds(step, repeats=1, device=args.device)
        if 10 * first > args.budget:  # the loop needs 10 steps for a steady rate
            rows.append(_row("train", backbone, f"bare {size}", rows=n_rows, note=f"skipped: one step {first:.1f} s"))
            continue
        flops, _ = count_flops(step)
        bare_steps = max(1, min(args.bare_steps, int(args.budget / (args.repeats * first))))
        token = memory.start(args.device)
        block = _best_seconds(partial(_repeat, step, bare_steps), repeats=args.repeats, device=args.device)
        rates = _rates(n_rows, block / bare_steps, flops, peak[args.device])
        bare = _row("train", backbone, f"bare {size}", **rates)
        bare.update(memory.stop(token), note=f"+ prep {1e3 * prep_seconds:.1f} ms/step (sampling, OT pairing)")
        steps[(backbone, n_rows)] = step

        n_steps = int(max(10, min(round(args.loop_rows / n_rows), args.budget // max(block / bare_steps, 1e-9))))
        token = memory.start(args.device)
        seconds = train(n_steps)
        per_step = max(seconds - setup_seconds, 1e-9) / (n_steps - 1)
        loop = _row("train", backbone, f"loop {size}", **_rates(n_rows, per_step, flops, peak[args.device]))
        loop.update(memory.stop(token), note=f"{n_steps} steps in {seconds:.1f} s; setup {setup_seconds:.1f} s")
        rows += [loop, bare]
        print(
            f"  train {backbone} {size}: loop {loop['cells_per_s']:.0f} cells/s, bare {bare['cells_per_s']:.0f}",
            flush=True,
        )
        for precision in args.precisions[1:]:
            rows += _precision_rows(model, backbone, (groups, cells), precision, flops, n_steps, train, args, peak)
    return rows, steps


def _precision_rows(model, backbone, batch, precision, flops, n_steps, train, args, peak) -> list[dict]:
    """Bare (and, for a precision that train_flow takes, loop) rows in reduced precision; same FLOPs as float32."""
    groups, cells = batch
    size = f"{groups}x{cells}"
    peak_rate = peak.get(f"{args.device}-bf16", peak[args.device])
    start = time.perf_counter()
    step, n_rows, _ = prepare_bare_step(model, groups, cells, args.device, args.seed, precision=precision)
    warmup = time.perf_counter() - start  # includes torch.compile's compilation
    first = _best_seconds(step, repeats=1, device=args.device)
    bare_steps = max(1, min(args.bare_steps, int(args.budget / (args.repeats * max(first, 1e-6)))))
    block = _best_seconds(partial(_repeat, step, bare_steps), repeats=args.repeats, device=args.device)
    bare = _row("train", backbone, f"bare {size} {precision}", **_rates(n_rows, block / bare_steps, flops, peak_rate))
    bare["note"] = f"frac of the bf16 matmul peak; first step + prepare {warmup:.1f} s"
    rows = [bare]
    if precision in ("bf16-mixed", "16-mixed"):  # what model.train(precision=...) runs
        setup_seconds = train(1, precision=precision)
        seconds = train(n_steps, precision=precision)
        per_step = max(seconds - setup_seconds, 1e-9) / (n_steps - 1)
        loop = _row("train", backbone, f"loop {size} {precision}", **_rates(n_rows, per_step, flops, peak_rate))
        loop["note"] = f"{n_steps} steps in {seconds:.1f} s; Lightning precision={precision!r}"
        rows.insert(0, loop)
    print(
        f"  train {backbone} {size} {precision}: " + ", ".join(f"{r['setting']} {r['cells_per_s']:.0f}" for r in rows)
    )
    return rows


def prepare_bare_step(model, groups: int, cells: int, device: str, seed: int, precision: str = "32-true"):
    """One optimizer step on a fixed batch, as ``FlowModule.training_step`` computes it, and its preparation time.

    ``precision``: ``"32-true"``; ``"bf16-mixed"`` runs the forward pass under bfloat16 autocast
    (what Lightning's ``precision="bf16-mixed"`` does); ``"bf16-compile"`` also compiles the
    module with ``torch.compile``.

    Returns
    -------
    step, n_rows, prep_seconds
        ``step()`` runs forward, backward and AdamW; ``n_rows`` rows per step;
        ``prep_seconds`` what drawing and OT-pairing one batch costs (left out of ``step``).
    """
    import torch

    from cellflow.models.backbones import EncodedCondition
    from cellflow.models.flow import sample_flow_time

    module, index, _ = model._flow_state  # the module train_flow just trained (private: a benchmark's view)
    module = module.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    n_groups = len(index.size)

    def prepare():
        picked = torch.randperm(n_groups, generator=generator)[: min(groups, n_groups)]
        batch = tuple(t.to(device) for t in index.sample(picked, cells, generator))
        with torch.no_grad():
            z0, z1, batch_group = module.pairs(batch)  # the training step's own sampling and pairing
            return module.path.sample(z0, z1, sample_flow_time(len(z1), device=z1.device)), batch_group

    prep_seconds = _best_seconds(prepare, repeats=3)
    path, batch_group = prepare()
    unique, inverse = torch.unique(batch_group, return_inverse=True)
    dropout = module.config.condition_dropout
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    forward = torch.compile(module) if precision.endswith("compile") else module
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision != "32-true")

    def step():
        # The arithmetic of FlowModule.training_step after pairing, then AdamW.
        optimizer.zero_grad(set_to_none=True)
        drop = torch.rand(len(unique), device=unique.device) < dropout if dropout > 0 else None
        with autocast:
            cond = module.encode_groups(unique, drop=drop)
            cond = EncodedCondition(cond.vector[inverse], cond.tokens[inverse], cond.mask[inverse])
            loss = torch.nn.functional.mse_loss(forward(path.zs, path.s, cond), path.velocity)
        loss.backward()
        optimizer.step()

    step()  # warm-up (allocations, optimizer state)
    return step, len(batch_group), prep_seconds


# ---------------------------------------------------------------------------------------------- 3. generation
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
        seconds = min(first, _best_seconds(partial(run, args.n_cells), repeats=more)) if more else first
        row = _row("generate", backbone, f"{method} {steps}", **_rates(args.n_cells, seconds, flops, peak["cpu"]))
        row.update(memory.stop(token), nfe=generated.uns["cellflow_generate"]["function_evaluations_per_condition"])
        row["under_2s"] = "yes" if seconds * 10_000 / args.n_cells < 2.0 else "no"
        row["note"] = f"best of {1 + more}; {args.threads} thread(s)"
        row["note"] += ("" if args.threads == 2 else ", the 2 s target is for 2") + scaled
        rows.append(row)
    mean_seconds, sample_seconds, serial_seconds = _decode_seconds(model, args)
    rows[0]["note"] += (
        f"; decoder {mean_seconds:.2f} s + count sampling {sample_seconds - mean_seconds:.2f} s"
        f" (torch's serial gamma-Poisson sampler: {serial_seconds:.2f} s)"
    )
    print(f"  generate {backbone}: " + ", ".join(f"{r['setting']} {r['seconds']:.2f} s" for r in rows), flush=True)
    return rows


def _decode_seconds(model, args) -> tuple[float, float, float]:
    """Seconds of the VAE decoder alone (expected counts), with count sampling, and of the baseline sampler.

    The baseline is what cellflow sampled with before: torch's gamma and Poisson samplers
    (serial on a CPU) on the same NB parameters, for ``args.n_cells`` cells.
    """
    import torch

    generator = torch.Generator().manual_seed(args.seed)
    z = torch.randn(args.n_cells, model.config.latent_dim, generator=generator)
    log_library = torch.full((args.n_cells, 1), float(np.log(3000.0)))
    batch = torch.zeros(args.n_cells, 1, dtype=torch.long)
    with torch.no_grad():
        mean_seconds, sample_seconds = (
            _best_seconds(
                partial(model.vae.decode, z, log_library, batch, sample=sample, generator=generator),
                repeats=args.repeats,
            )
            for sample in (False, True)
        )
        px = model.vae.module.generative(z, log_library, batch)["px"]
        mu, theta = px.mu, px.theta.expand_as(px.mu)

        def serial():
            torch.poisson(torch._standard_gamma(theta) * (mu / theta))

        return mean_seconds, sample_seconds, _best_seconds(serial, repeats=args.repeats)


# ---------------------------------------------------------------------------------------------- 4. quality
def quality_rows(args, memory: PeakMemory) -> list[dict]:
    """Norman split: score each solver before and after reflow (and distillation)."""
    import cellflow as cf
    from cellflow.benchmark import AdditiveBaseline, ConditionScorer, conditions_frame, split_combinations
    from cellflow.metrics import log_normalize

    adata = load_norman(args.data)
    cf.pp.setup(adata, perturbation_key="perturbation", control="control")
    frame = conditions_frame(adata)
    split = split_combinations(frame, n_combinations=N_DOUBLES, n_singles=0, seed=0)
    held_out = sorted(split.held_out)
    train = adata[split.train_mask].copy()
    cf.pp.setup(train, perturbation_key="perturbation", control="control")
    real = log_normalize(adata.X)
    labels = frame["condition"].to_numpy()
    # The scoring of cellflow.benchmark.score_held_out (PCs fitted on all real cells), solver by solver.
    scorer = HeldOutScorer(ConditionScorer(real), {c: real[labels == c] for c in held_out}, real[labels == "control"])
    print(f"  quality: Norman {adata.n_obs} cells, train {train.n_obs}; held out {', '.join(held_out)}", flush=True)

    additive = AdditiveBaseline().fit(train)
    predictions = {c: additive.predict(c, n_cells=len(cells), seed=args.seed) for c, cells in scorer.truth.items()}
    rows = [
        _row("quality", "additive", "baseline", **scorer.mean(predictions)),
        _row("quality", "noise_floor", "half vs half", **scorer.noise_floor(args.seed)),
    ]

    token = memory.start()
    model = cf.CellFlow(train, backbone="mlp", latent_dim=32, seed=args.seed)
    # Reflow is scored as its own stage below, so train() must not run it.
    model.train(
        flow_steps=args.flow_steps, vae_epochs=args.vae_epochs, reflow_rounds=0, progress_bar=False, accelerator="cpu"
    )
    vae_seconds, flow_seconds = model.history["vae_seconds"], model.history["flow_seconds"]
    rows.append(_row("quality", "train", f"vae + flow {args.flow_steps}", seconds=vae_seconds + flow_seconds))
    rows[-1].update(memory.stop(token), note=f"VAE {vae_seconds:.0f} s, flow {flow_seconds:.0f} s")
    rows += solver_rows(model, "flow", scorer, args.seed)
    save_rows(rows, args.out and args.out / "quality_partial")

    stages = [("reflow1", {"rounds": 1, "distill_steps": None})]
    if args.distill:
        stages.append((f"reflow1+distill{args.distill}", {"rounds": 1, "distill_steps": args.distill}))
    for name, options in stages:
        token = memory.start()
        model.reflow(steps=args.reflow_steps, progress_bar=False, accelerator="cpu", **options)
        rows.append(_row("quality", "train", name, seconds=model.history["reflow_seconds"]))
        rows[-1].update(memory.stop(token), note="one reflow round (defaults) on the model above")
        rows += solver_rows(model, name, scorer, args.seed)
        save_rows(rows, args.out and args.out / "quality_partial")
    return rows


class HeldOutScorer:
    """Mean scores over the held-out conditions: energy distance and Pearson delta on the top-20 genes."""

    def __init__(self, scorer, truth: dict[str, np.ndarray], control: np.ndarray) -> None:
        self.scorer, self.truth, self.control = scorer, truth, control

    def mean(self, predictions: dict[str, np.ndarray]) -> dict[str, float]:
        """Average of each metric over the conditions (``predictions``: log-normalised cells per condition)."""
        return self._average([self.scorer.score(predictions[c], t, self.control) for c, t in self.truth.items()])

    def noise_floor(self, seed: int) -> dict[str, float]:
        """Half of the real cells predicting the other half, averaged over the conditions."""
        return self._average([self.scorer.noise_floor(t, self.control, seed=seed) for t in self.truth.values()])

    @staticmethod
    def _average(scores: list[dict]) -> dict[str, float]:
        return {
            "energy": float(np.mean([s["energy_distance"] for s in scores])),
            "pearson_top20": float(np.mean([s["pearson_delta_top20"] for s in scores])),
        }


def solver_rows(model, name: str, scorer: HeldOutScorer, seed: int) -> list[dict]:
    """Generate every held-out condition with each solver of :data:`QUALITY_SOLVERS` and score it."""
    import cellflow as cf
    from cellflow.metrics import log_normalize

    rows = []
    for method, steps in QUALITY_SOLVERS:
        predictions, seconds, nfe = {}, 0.0, []
        for condition, cells in scorer.truth.items():
            start = time.perf_counter()
            pred = cf.tl.generate(
                model, conditions=[condition], n_cells=len(cells), seed=seed, method=method, steps=steps
            )
            seconds += time.perf_counter() - start
            nfe.append(pred.uns["cellflow_generate"]["function_evaluations_per_condition"])
            predictions[condition] = log_normalize(pred.X)
        setting = "dopri5" if method == "dopri5" else f"{method} {steps}"
        n_cells = sum(len(cells) for cells in scorer.truth.values())
        rows.append(_row("quality", name, setting, rows=n_cells, seconds=seconds, cells_per_s=n_cells / seconds))
        rows[-1].update(scorer.mean(predictions), nfe=float(np.mean(nfe)))
        print(f"  quality {name} {setting}: energy {rows[-1]['energy']:.4f}, top20 {rows[-1]['pearson_top20']:.4f}")
    return rows


# ---------------------------------------------------------------------------------------------- output
def profile_step(step, label: str, n_steps: int = 5) -> None:
    """Print the top operators (self CPU time) of ``n_steps`` bare steps."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n_steps):
            step()
    print(f"\ntorch.profiler, {label}, {n_steps} steps, top operators by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def save_rows(rows: list[dict], out: Path | None) -> None:
    """Write the rows measured so far to ``out/speed.csv`` (nothing without ``--out``)."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).reindex(columns=COLUMNS).to_csv(out / "speed.csv", index=False)


def format_table(table: pd.DataFrame) -> str:
    """The one results table, numbers rounded for reading."""
    formats = {
        "rows": "{:.0f}",
        "seconds": "{:.4g}",
        "cells_per_s": "{:,.0f}",
        "gflop": "{:.3g}",
        "gflop_per_s": "{:.1f}",
        "frac_peak": "{:.3f}",
        "peak_mb": "{:.0f}",
        "added_mb": "{:.0f}",
        "nfe": "{:.0f}",
        "energy": "{:.4f}",
        "pearson_top20": "{:.4f}",
    }
    shown = table.copy().astype(object)
    for column, fmt in formats.items():
        shown[column] = [fmt.format(v) if isinstance(v, (int, float)) and np.isfinite(v) else "" for v in table[column]]
    shown = shown.fillna("")
    with pd.option_context("display.width", 250, "display.max_colwidth", 70, "display.max_columns", None):
        return shown.to_string(index=False)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Run every measurement and print the table."""
    args = parse_args(argv)
    import faulthandler
    import warnings

    import torch

    # train_flow called again (every measurement here) finds the networks in eval mode; with the default
    # dropout of 0 this changes nothing, so Lightning's warning about it is only noise in this table.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    faulthandler.enable()  # a crash in native code still says where

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here.")
    memory = PeakMemory()
    start = time.perf_counter()
    load = os.getloadavg()
    print(
        f"cellflow speed: torch {torch.__version__}, {args.threads} torch thread(s) of {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {load[0]:.2f} "
        f"{'(other work is running: timings are unreliable)' if load[0] > 1.0 else ''}\n"
        f"memory: {memory.note}",
        flush=True,
    )
    rows, peak = matmul_rows(args.repeats, memory, args.quick)
    print(f"  matmul peak: {', '.join(f'{k} {v:.1f} GFLOP/s' for k, v in peak.items())}", flush=True)

    steps = {}
    if not args.skip_speed:
        adata = throughput_data(args.genes, args.seed)
        for backbone in args.backbones:
            model = throughput_model(adata, backbone, args.seed)
            if args.skip_training:  # generation needs a trained flow; its speed does not depend on the fit
                model.train_flow(steps=10, accelerator="cpu", progress_bar=False)
            else:
                backbone_rows, backbone_steps = training_rows(model, backbone, args, peak, memory)
                rows += backbone_rows
                steps |= backbone_steps
            model.encoder.cpu().eval(), model.backbone.cpu().eval()
            rows += generation_rows(model, adata, backbone, args, peak, memory)
            save_rows(rows, args.out)  # a run cut short keeps what it measured
    if not args.skip_quality:
        rows += quality_rows(args, memory)
    if torch.get_num_threads() != args.threads:
        print(f"warning: torch now uses {torch.get_num_threads()} threads, not {args.threads}; something reset it.")

    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    print(f"\nResults ({time.perf_counter() - start:.0f} s; frac_peak = achieved GFLOP/s / best matmul rate):")
    print(format_table(table))
    if args.out is not None:
        save_rows(rows, args.out)
        print(f"\nwrote {args.out / 'speed.csv'}")
    if args.profile:
        mlp = {rows_: step for (backbone, rows_), step in steps.items() if backbone == "mlp"}
        if mlp:
            largest = max(mlp)
            profile_step(mlp[largest], f"mlp bare step, batch {largest}")
    return table


if __name__ == "__main__":
    main()
