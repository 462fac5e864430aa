"""Few-step quality of cellflow on Norman 2019: each ODE solver scored before and after reflow and distillation.

What is measured. The split of ``benchmarks/norman_combinations.py`` (the 5 held-out doubles
whose singles are both measured; every other cell trains). cellflow (``mlp``, latent 32, its
defaults otherwise) is trained once with ``--flow-steps`` flow steps and no reflow, and each
double is generated (as many cells as it has) with euler 1, 2, 4, 8, 16 steps, heun 8 and the
adaptive dopri5 (``nfe`` = its velocity evaluations per condition), then scored by energy
distance on 50 principal components of the real cells (lower is better) and Pearson delta on the
top-20 genes (higher is better), mean over the 5 doubles (``energy``, ``pearson_top20``). Then
``model.reflow(rounds=1, steps=--reflow-steps)`` and the same list again; with ``--distill K``
one more reflow round distilled to ``K`` Euler steps (``model.reflow(rounds=1, distill_steps=K)``)
and the list again. The additive baseline and the noise floor (half of the real cells predicting
the other half) are scored on the same rows. ``train`` rows give the seconds and peak memory of
training (VAE + flow) and of each reflow stage; the solver rows give the seconds of generating
all 5 doubles. This is how the default solvers were chosen (Heun with 8 steps for a flow that
was not reflowed, Euler with 4 steps after reflow). On a CPU it takes several minutes.

Run::

    OMP_NUM_THREADS=2 .venv/bin/python -u benchmarks/solver_quality.py --threads 2 [--distill 1] [--out DIR]
    OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/solver_quality.py --quick   # smoke run: tiny training

Options: ``--threads`` (default ``OMP_NUM_THREADS``, else all cores), ``--data`` (the
Norman/McFaline-Figueroa subset), ``--flow-steps`` (2,000), ``--vae-epochs`` (cellflow's
default), ``--reflow-steps`` (1,000 per round), ``--distill K``, ``--seed``, ``--quick`` (1 VAE
epoch, 20 flow steps, 10 reflow steps, distillation to 1 step: a check that it runs, not a
measurement), ``--out DIR`` (writes ``solver_quality.csv`` after every stage, so a run cut
short keeps what it measured), ``--results-page`` (writes the table into ``docs/results.md``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import (  # noqa: E402
    COLUMNS,
    PeakMemory,
    check_threads,
    common_arguments,
    format_table,
    resolve_threads,
    results_markdown,
    row,
    save_rows,
    start_run,
)
from _results import provenance, write_results_section  # noqa: E402
from norman_combinations import DEFAULT_DATA, N_DOUBLES, load_norman  # noqa: E402

QUALITY_SOLVERS = [("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("euler", 16), ("heun", 8), ("dopri5", 1)]
CSV = "solver_quality.csv"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser, repeats=None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Norman/McFaline-Figueroa subset")
    parser.add_argument("--flow-steps", type=int, default=2000, help="flow steps of the model")
    parser.add_argument("--vae-epochs", type=int, default=None, help="VAE epochs (default: cellflow's)")
    parser.add_argument("--reflow-steps", type=int, default=1000, help="steps per reflow round (cellflow's 1000)")
    parser.add_argument("--distill", type=int, default=0, help="K > 0: also reflow + distill to K Euler steps")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny training (not a measurement)")
    args = parser.parse_args(argv)
    resolve_threads(args)
    if args.quick:
        args.vae_epochs, args.flow_steps, args.reflow_steps, args.distill = 1, 20, 10, args.distill or 1
    if min(args.threads, args.flow_steps, args.reflow_steps) < 1 or args.distill < 0:
        parser.error("--threads, --flow-steps and --reflow-steps must be at least 1; --distill at least 0.")
    return args


class HeldOutScorer:
    """Mean scores over the held-out conditions: energy distance and Pearson delta on the top-20 genes.

    The scoring of ``cellflow.evaluation.score_held_out`` (PCs fitted on all real cells), solver by solver.
    """

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


def quality_rows(args, memory: PeakMemory, csv: Path | None) -> list[dict]:
    """Norman split: score each solver before and after reflow (and distillation)."""
    import cellflow as cf
    from cellflow.evaluation import AdditiveBaseline, ConditionScorer, conditions_frame, split_combinations
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
    scorer = HeldOutScorer(ConditionScorer(real), {c: real[labels == c] for c in held_out}, real[labels == "control"])
    print(f"  quality: Norman {adata.n_obs} cells, train {train.n_obs}; held out {', '.join(held_out)}", flush=True)

    additive = AdditiveBaseline().fit(train)
    predictions = {c: additive.predict(c, n_cells=len(cells), seed=args.seed) for c, cells in scorer.truth.items()}
    rows = [
        row("quality", "additive", "baseline", **scorer.mean(predictions)),
        row("quality", "noise_floor", "half vs half", **scorer.noise_floor(args.seed)),
    ]

    token = memory.start()
    model = cf.CellFlow(train, backbone="mlp", latent_dim=32, seed=args.seed)
    # Reflow is scored as its own stage below, so train() must not run it.
    model.train(
        flow_steps=args.flow_steps, vae_epochs=args.vae_epochs, reflow_rounds=0, progress_bar=False, accelerator="cpu"
    )
    vae_seconds, flow_seconds = model.history["vae_seconds"], model.history["flow_seconds"]
    rows.append(row("quality", "train", f"vae + flow {args.flow_steps}", seconds=vae_seconds + flow_seconds))
    rows[-1].update(memory.stop(token), note=f"VAE {vae_seconds:.0f} s, flow {flow_seconds:.0f} s")
    rows += solver_rows(model, "flow", scorer, args.seed)
    save_rows(rows, csv)

    stages = [("reflow1", {"rounds": 1, "distill_steps": None})]
    if args.distill:
        stages.append((f"reflow1+distill{args.distill}", {"rounds": 1, "distill_steps": args.distill}))
    for name, options in stages:
        token = memory.start()
        model.reflow(steps=args.reflow_steps, progress_bar=False, accelerator="cpu", **options)
        rows.append(row("quality", "train", name, seconds=model.history["reflow_seconds"]))
        rows[-1].update(memory.stop(token), note=f"one reflow round ({args.reflow_steps} steps) on the model above")
        rows += solver_rows(model, name, scorer, args.seed)
        save_rows(rows, csv)
    return rows


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
        rows.append(row("quality", name, setting, rows=n_cells, seconds=seconds, cells_per_s=n_cells / seconds))
        rows[-1].update(scorer.mean(predictions), nfe=float(np.mean(nfe)))
        print(f"  quality {name} {setting}: energy {rows[-1]['energy']:.4f}, top20 {rows[-1]['pearson_top20']:.4f}")
    return rows


def results_section(table: pd.DataFrame, args) -> str:
    """The quality rows (and the training times) for the results page."""
    training = table["model"] == "train"
    quality, training = table[~training], table[training]
    return (
        f"{provenance()}\n\nMean over the {N_DOUBLES} held-out doubles (as many predicted cells as real "
        "ones); energy distance: lower is better, Pearson delta top-20: higher is better. `model` is the "
        "stage of the one trained model (or a reference row).\n\n"
        f"{results_markdown(quality, ['model', 'setting', 'nfe', 'energy', 'pearson_top20', 'seconds'])}\n\n"
        f"Training:\n\n{results_markdown(training, ['setting', 'seconds', 'peak_mb', 'note'])}"
    )


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Train, reflow, score every solver at every stage, and print the table."""
    args = parse_args(argv)
    memory = start_run("solver quality", args.threads)
    start = time.perf_counter()
    csv = args.out and args.out / CSV
    rows = quality_rows(args, memory, csv)
    check_threads(args.threads)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    print(f"\nResults ({time.perf_counter() - start:.0f} s):")
    print(format_table(table))
    if csv is not None:
        save_rows(rows, csv)
        print(f"\nwrote {csv}")
    if args.results_page:
        write_results_section("solver_quality", results_section(table, args))
    return table


if __name__ == "__main__":
    main()
