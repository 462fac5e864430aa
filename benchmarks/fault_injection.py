"""Kill a training run at random moments and check that restarting it gives the uninterrupted result.

Each trial starts ``model.train(checkpoint_dir=...)`` on a small simulated screen in a
subprocess, sends it SIGKILL or SIGTERM after a random delay (uniform between the moment an
uninterrupted run starts training and its end), starts the same command again (up to
``--restarts`` times, each killed the same way with probability ``--repeat-kill``) and finally
lets it finish. A trial survives when
the final model generates exactly the cells of the uninterrupted run and the checkpoint folder
was never left unloadable. The report counts survivals out of trials, by signal and by the stage
the kill hit (read from which stage files existed at the kill).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/fault_injection.py [--trials 20] [--seed 0]
[--out DIR] [--results-page]``
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TRAIN = {
    "vae_epochs": 4,
    "flow_steps": 400,
    "reflow_rounds": 1,
    "reflow_kwargs": {"steps": 100, "pairs_per_group": 16, "ode_steps": 2},
}
GENERATE = {"conditions": ["control"], "n_cells": 30, "covariates": {"cell_type": "type_0"}, "seed": 1}
STAGE_FILES = [("reflow", "after_flow/config.json"), ("flow", "vae/vae.json"), ("vae", "run.json")]


def job(checkpoint_dir: str | None, out: str) -> None:
    """The training run that is killed: train (resuming from ``checkpoint_dir``), generate, save the latents."""
    import torch

    import cellflow as cf

    torch.set_num_threads(1)
    adata = cf.datasets.simulate_perturbseq(n_cells=800, n_genes=40, n_cell_types=2, seed=0)
    cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    model = cf.CellFlow(adata, latent_dim=4, backbone_kwargs={"hidden_dim": 16, "n_blocks": 1}, seed=5)
    model.train(**TRAIN, checkpoint_dir=checkpoint_dir, progress_bar=False, accelerator="cpu")
    np.save(out, cf.tl.generate(model, **GENERATE).obsm["X_cellflow"])


def _command(checkpoint_dir: Path | None, out: Path) -> list[str]:
    return [sys.executable, __file__, "--job", str(checkpoint_dir or ""), str(out)]


def _stage(checkpoint_dir: Path) -> str:
    for stage, marker in STAGE_FILES:
        if (checkpoint_dir / marker).exists():
            return stage
    return "start"


def trial(rng: random.Random, reference: np.ndarray, window: tuple[float, float], args, env: dict) -> dict:
    """One killed-and-restarted run; returns what was killed where and whether it survived."""
    with tempfile.TemporaryDirectory() as folder:
        checkpoint_dir, out = Path(folder) / "ck", Path(folder) / "out.npy"
        kills = []
        for attempt in range(args.restarts + 1):
            if attempt and rng.random() > args.repeat_kill:
                break
            sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
            job_process = subprocess.Popen(
                _command(checkpoint_dir, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(rng.uniform(*window))
            stage = _stage(checkpoint_dir)
            if job_process.poll() is not None:
                break  # finished before the kill
            job_process.send_signal(sig)
            job_process.wait()
            kills.append((sig.name, stage))
        finished = subprocess.run(_command(checkpoint_dir, out), env=env, capture_output=True, text=True)
        survived = finished.returncode == 0 and out.exists() and np.array_equal(np.load(out), reference)
        return {"kills": kills, "survived": survived, "error": finished.stderr.strip().splitlines()[-1:]}


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the trials and print the survival counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=2, help="kills per trial at most")
    parser.add_argument("--repeat-kill", type=float, default=0.5, help="chance that a restart is killed again")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-page", action="store_true", help="write the table to docs/results.md")
    parser.add_argument("--job", nargs=2, metavar=("CHECKPOINT_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        job(args.job[0] or None, args.job[1])
        return []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with tempfile.TemporaryDirectory() as folder:
        # The uninterrupted run, with a checkpoint folder: when it starts training, and when it ends.
        reference_file, checkpoint_dir = Path(folder) / "reference.npy", Path(folder) / "ck"
        start = time.perf_counter()
        job_process = subprocess.Popen(
            _command(checkpoint_dir, reference_file), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while not (checkpoint_dir / "run.json").exists() and job_process.poll() is None:
            time.sleep(0.02)
        training = time.perf_counter() - start
        if job_process.wait() != 0:
            raise RuntimeError("the uninterrupted run failed; run it with --job to see why")
        duration = time.perf_counter() - start
        reference = np.load(reference_file)
    print(
        f"uninterrupted run: {duration:.1f} s, training from {training:.1f} s; {args.trials} trials, "
        f"kills uniform in [{training:.1f}, {duration:.1f}] s after the start"
    )
    rng = random.Random(args.seed)
    results = []
    for number in range(args.trials):
        result = trial(rng, reference, (training, duration), args, env)
        results.append(result)
        where = ", ".join(f"{s} in {stage}" for s, stage in result["kills"]) or "no kill (finished first)"
        print(
            f"trial {number + 1}: {where} -> {'survived' if result['survived'] else 'FAILED ' + str(result['error'])}"
        )
    kills = [k for r in results for k in r["kills"]]
    survived = sum(r["survived"] for r in results)
    by_stage = {}
    for r in results:
        for sig, stage in r["kills"]:
            by_stage.setdefault((sig, stage), [0, 0])
            by_stage[(sig, stage)][0] += r["survived"]
            by_stage[(sig, stage)][1] += 1
    lines = [f"survived {survived} of {len(results)} trials ({len(kills)} kills)"]
    lines += [f"  {sig} during {stage}: {ok}/{n} trials survived" for (sig, stage), (ok, n) in sorted(by_stage.items())]
    print("\n".join(lines))
    if args.results_page:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _results import write_results_section

        command = f"benchmarks/fault_injection.py --trials {args.trials} --seed {args.seed}"
        write_results_section("fault_injection", f"`{command}`\n\n```\n" + "\n".join(lines) + "\n```\n")
    return results


if __name__ == "__main__":
    main()
