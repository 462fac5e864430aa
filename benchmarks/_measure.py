"""Shared helpers of the speed benchmarks: threads, peak memory, timing, FLOP counting, matmul peak, tables.

Used by ``train_speed.py``, ``generate_speed.py`` and ``solver_quality.py``. Every row of their
tables has the columns of :data:`COLUMNS` (blank where a row does not measure a quantity), so
their CSV files can be concatenated.

Reading ``frac_peak``: achieved FLOP/s divided by the best big-matmul rate of the machine
(:func:`matmul_rows`). 1.0 would mean every cycle went into large, well-shaped float32 matrix
products. Small layers (a latent of 32, a width of 256) cannot reach it: the
``(1024x256)@(256x512)`` row shows the ceiling for one layer of that shape, and elementwise work
(LayerNorm, GELU, modulation, AdamW), Python and framework overhead take time without adding FLOPs.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _results import RESULTS_FLAG, RESULTS_HELP

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
FORMATS = {
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
THROUGHPUT_PERTURBATIONS = 24  # 24 singles + 24 doubles in 2 cell types: 96 groups, enough for 32 x 128


# ---------------------------------------------------------------------------------------------- options
def common_arguments(parser: argparse.ArgumentParser, *, repeats: int | None = 3) -> None:
    """Options every speed script takes: threads, repeats (unless ``None``), seed, output directory, results page."""
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or all)")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help="timed repeats; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="directory to write the CSV file to")
    parser.add_argument(RESULTS_FLAG, action="store_true", help=RESULTS_HELP)


def resolve_threads(args: argparse.Namespace) -> None:
    """``args.threads``: as given, else ``OMP_NUM_THREADS``, else every core this process may use."""
    if args.threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        args.threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or cores


def start_run(name: str, threads: int) -> PeakMemory:
    """Set the torch thread count, quiet known noise, print the header line; returns the memory probe."""
    import faulthandler
    import warnings

    import torch

    # train_flow called again (every measurement here) finds the networks in eval mode; with the default
    # dropout of 0 this changes nothing, so Lightning's warning about it is only noise in these tables.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    faulthandler.enable()  # a crash in native code still says where
    torch.set_num_threads(threads)
    memory = PeakMemory()
    load = os.getloadavg()[0]
    busy = " (other work is running: timings are unreliable)" if load > 1.0 else ""
    print(
        f"cellflow {name}: torch {torch.__version__}, {threads} torch thread(s) of {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {load:.2f}{busy}\n"
        f"memory: {memory.note}",
        flush=True,
    )
    return memory


def check_threads(threads: int) -> None:
    """Warn when something changed torch's thread count during the run."""
    import torch

    if torch.get_num_threads() != threads:
        print(f"warning: torch now uses {torch.get_num_threads()} threads, not {threads}; something reset it.")


# ---------------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of a phase: resident set (Linux high-water mark, reset per phase) or CUDA allocations.

    ``peak_mb`` is the highest resident set size during the phase, ``added_mb`` its rise over
    the phase's start. On Linux the kernel's high-water mark is reset before each phase
    (``echo 5 > /proc/self/clear_refs``, then ``VmHWM`` of ``/proc/self/status``); elsewhere
    ``ru_maxrss`` is used, which only ever grows (said in :attr:`note`). On ``"cuda"``:
    ``torch.cuda.max_memory_allocated``.
    """

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


# ---------------------------------------------------------------------------------------------- timing
def synchronize(device: str) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def best_seconds(fn, *, repeats: int, device: str = "cpu") -> float:
    """Best wall-clock time of ``repeats`` calls of ``fn`` (the least disturbed by other work)."""
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def repeat(fn, times: int) -> None:
    """Call ``fn`` ``times`` times."""
    for _ in range(times):
        fn()


def count_flops(fn) -> tuple[int, object]:
    """FLOPs of one call of ``fn`` (matrix products and attention, forward and backward), and what it returned.

    Counted with ``torch.utils.flop_counter.FlopCounterMode``: the optimizer and elementwise
    work are not FLOPs in this count.
    """
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


# ---------------------------------------------------------------------------------------------- rows
def row(section: str, model: str, setting: str, **values) -> dict:
    """One row of a results table."""
    return {"section": section, "model": model, "setting": setting, **values}


def rates(rows: float, seconds: float, flops: float, peak_gflops: float) -> dict:
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


# ---------------------------------------------------------------------------------------------- matmul peak
def matmul_rows(repeats: int, memory: PeakMemory, quick: bool) -> tuple[list[dict], dict[str, float]]:
    """The machine's matmul rate: rows, and the peak per device that ``frac_peak`` divides by.

    float32 ``torch.matmul`` of square matrices (2048 and 4096, 2048 only with ``quick``; best
    of several repeats) on the CPU and, when CUDA is available, on the GPU (4096 with TF32 off
    and on; bfloat16 at 8192, the peak of the bf16 rows: ``peak["cuda-bf16"]``). The row
    ``(1024x256)@(256x512)`` is one multiply shaped like the mlp backbone's widest layer at
    batch 1024: what a model made only of such layers could reach.
    """
    import torch

    rows, peak = [], {}
    for size in (2048,) if quick else (2048, 4096):
        token = memory.start()
        seconds, flops = _matmul_seconds(size, size, size, "cpu", max(5, repeats))
        rows.append(row("matmul", "float32", f"{size}^3 cpu", seconds=seconds, gflop=flops / 1e9, **memory.stop(token)))
        rows[-1]["gflop_per_s"] = flops / seconds / 1e9
        peak["cpu"] = max(peak.get("cpu", 0.0), rows[-1]["gflop_per_s"])
    seconds, flops = _matmul_seconds(1024, 256, 512, "cpu", 20)
    rows.append(row("matmul", "float32", "(1024x256)@(256x512) cpu", seconds=seconds, gflop=flops / 1e9))
    rows[-1].update(gflop_per_s=flops / seconds / 1e9, note="mlp-shape: its widest layer at batch 1024")
    if torch.cuda.is_available():
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            seconds, flops = _matmul_seconds(4096, 4096, 4096, "cuda", 10)
            rows.append(row("matmul", "float32", f"4096^3 cuda tf32={'on' if tf32 else 'off'}", seconds=seconds))
            rows[-1].update(gflop=flops / 1e9, gflop_per_s=flops / seconds / 1e9)
            if not tf32:
                peak["cuda"] = rows[-1]["gflop_per_s"]
        torch.backends.cuda.matmul.allow_tf32 = False  # the training rows run in true float32, torch's default
        rows[-1]["note"] = "training rows run with TF32 off (torch's default); peak = tf32=off"
        seconds, flops = _matmul_seconds(8192, 8192, 8192, "cuda", 10, dtype=torch.bfloat16)
        rows.append(row("matmul", "bfloat16", "8192^3 cuda", seconds=seconds, gflop=flops / 1e9))
        rows[-1].update(gflop_per_s=flops / seconds / 1e9, note="the peak of the bf16 training rows")
        peak["cuda-bf16"] = rows[-1]["gflop_per_s"]
    for item in rows:
        device = "cpu" if "cuda" not in item["setting"] else "cuda-bf16" if item["model"] == "bfloat16" else "cuda"
        item["frac_peak"] = item["gflop_per_s"] / peak[device]
    print(f"  matmul peak: {', '.join(f'{k} {v:.1f} GFLOP/s' for k, v in peak.items())}", flush=True)
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

    return best_seconds(run, repeats=repeats, device=device) / inner, 2 * m * k * n


# ---------------------------------------------------------------------------------------------- data
def throughput_data(n_genes: int, seed: int):
    """Simulated Perturb-seq cells registered for cellflow: 3,000 cells, 2 cell types, 96 training groups."""
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
    """A CellFlow (latent 32, the backbone's defaults) with a briefly trained VAE: the flow trains on its latents."""
    import cellflow as cf

    model = cf.CellFlow(adata, backbone=backbone, latent_dim=32, seed=seed)
    model.train_vae(epochs=1, accelerator="cpu", progress_bar=False)
    return model


# ---------------------------------------------------------------------------------------------- output
def save_rows(rows: list[dict], path: Path | None) -> None:
    """Write the rows measured so far to the CSV file ``path`` (nothing for ``None``)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).reindex(columns=COLUMNS).to_csv(path, index=False)


def format_table(table: pd.DataFrame) -> str:
    """A results table as text, numbers rounded for reading, the columns no row measures left out."""
    shown = table.copy().astype(object)
    for column, fmt in FORMATS.items():
        if column in table:
            shown[column] = [
                fmt.format(v) if isinstance(v, (int, float)) and np.isfinite(v) else "" for v in table[column]
            ]
    shown = shown.fillna("")
    shown = shown[[c for c in shown.columns if (shown[c].astype(str) != "").any()]]
    with pd.option_context("display.width", 250, "display.max_colwidth", 70, "display.max_columns", None):
        return shown.to_string(index=False)


def results_markdown(table: pd.DataFrame, columns: list[str]) -> str:
    """The given columns of a results table as a Markdown table (for the results page)."""
    from _results import markdown_table

    return markdown_table(table[columns], {c: f for c, f in FORMATS.items() if c in columns})
