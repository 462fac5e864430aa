"""One process against two (Lightning DDP, gloo, same global minibatch): held-out quality on the demo's split.

The demo's screen and split (``cellflow demo``: 6,000 simulated cells x 200 genes, 2 cell types;
4 combinations and 2 singles held out) are trained with the library defaults once per seed on
one process and on ``--processes`` processes (``devices=N, trainer_kwargs={"strategy": "ddp"}``;
each process takes 1/N of the VAE's and the flow's minibatch, so the global minibatch is the
same). Scored per run: the RMSE of the predicted mean expression against the simulator's truth
(the demo's ``truth_rmse``) and the energy distance against the real held-out cells, averaged
over the held-out conditions and cell types. A distributed run is as good as a single one when
its mean is within the spread between seeds.

Run: ``.venv/bin/python -u benchmarks/ddp_quality.py [--seeds 0 1 2] [--processes 2] [--out DIR]
[--results-page]``. Each run is a separate process (Lightning starts the DDP workers itself).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from _results import RESULTS_FLAG, RESULTS_HELP, write_results_section


def one_run(seed: int, processes: int, out: Path) -> None:
    """Train on the demo's split with ``processes`` processes; rank 0 writes the scores as JSON."""
    import torch

    import cellflow as cf
    from cellflow.evaluation import conditions_frame, score_held_out, split_combinations

    torch.set_num_threads(1)
    adata = cf.datasets.simulate_perturbseq(n_cells=6000, n_genes=200, n_cell_types=2, seed=seed)
    setup = {"perturbation_key": "perturbation", "control": "control", "covariate_keys": ["cell_type"]}
    cf.pp.setup(adata, **setup)
    frame = conditions_frame(adata)
    split = split_combinations(frame, n_combinations=4, n_singles=2, seed=seed)
    train = adata[split.train_mask].copy()
    cf.pp.setup(train, **setup)
    model = cf.CellFlow(train, seed=seed)
    distributed = {"devices": processes, "trainer_kwargs": {"strategy": "ddp"}} if processes > 1 else {}
    model.train(accelerator="cpu", progress_bar=False, **distributed)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    truth = cf.datasets.true_means(adata)
    truth = truth.droplevel([n for n in truth.index.names if n not in ("perturbation", "cell_type")])

    def truth_rmse(pred, condition, context):
        predicted = np.log1p(np.expm1(pred).mean(axis=0))
        true = np.log1p(1e4 * truth.loc[(condition, context["cell_type"])].to_numpy())
        return {"truth_rmse": float(np.sqrt(np.mean((predicted - true) ** 2)))}

    results = score_held_out(
        adata,
        frame,
        split.held_out,
        model=model,
        baselines=[],
        covariate_keys=["cell_type"],
        seed=seed,
        extra_metrics=truth_rmse,
    )
    ours = results[results["method"] == "cellflow"]
    scores = {
        "seed": seed,
        "processes": processes,
        "truth_rmse": float(ours["truth_rmse"].mean()),
        "energy_distance": float(ours["energy_distance"].mean()),
        "pearson_delta_top20": float(ours["pearson_delta_top20"].mean()),
        "train_seconds": sum(model.history.get(k, 0.0) for k in ("vae_seconds", "flow_seconds", "reflow_seconds")),
    }
    (out / f"seed{seed}_p{processes}.json").write_text(json.dumps(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", type=int, nargs=2, default=None, help=argparse.SUPPRESS)  # seed, processes
    parser.add_argument(RESULTS_FLAG, action="store_true", help=RESULTS_HELP)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="cellflow-ddp-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.one is not None:
        one_run(*args.one, out)
        return
    for seed in args.seeds:
        for processes in (1, args.processes):
            command = [sys.executable, "-u", __file__, "--one", str(seed), str(processes), "--out", str(out)]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"seed {seed}, {processes} process(es) failed")
            print(open(out / f"seed{seed}_p{processes}.json").read(), flush=True)
    runs = pd.DataFrame([json.loads(p.read_text()) for p in sorted(out.glob("seed*_p*.json"))])
    runs.to_csv(out / "ddp_quality.csv", index=False)
    metrics = ["truth_rmse", "energy_distance", "pearson_delta_top20", "train_seconds"]
    summary = runs.groupby("processes")[metrics].agg(["mean", "std"])
    lines = ["| processes | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for processes, row in summary.iterrows():
        cells = [f"{row[(m, 'mean')]:.3f} ± {row[(m, 'std')]:.3f}" for m in metrics]
        lines.append(f"| {processes} | " + " | ".join(cells) + " |")
    markdown = (
        f"Seeds {sorted(int(s) for s in runs['seed'].unique())}, mean ± sd over seeds; the demo's split, "
        "library defaults, the same global minibatch.\n\n" + "\n".join(lines)
    )
    print(markdown)
    if getattr(args, RESULTS_FLAG.strip("-").replace("-", "_")):
        write_results_section("ddp_quality", markdown)


if __name__ == "__main__":
    main()
