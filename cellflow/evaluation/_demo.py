"""The main job in one call: simulate a screen, hold out conditions, train, predict, score."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

import cellflow as cf

from ._baselines import AdditiveBaseline, ControlBaseline, conditions_frame
from ._harness import score_held_out, summary_table
from ._splits import split_combinations

DEMO_METRICS = ["truth_rmse", "energy_distance", "pearson_delta_top20", "pearson_delta", "mse_top20"]


def run_demo(
    *,
    n_cells: int = 6000,
    n_genes: int = 200,
    flow_steps: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
    progress_bar: bool | None = None,
) -> pd.DataFrame:
    """Simulate a Perturb-seq screen, train cellflow without some conditions, and score its predictions.

    Held out: 4 combinations whose singles are in training, and 2 single perturbations.
    Each is predicted in both cell types and compared with the real held-out cells and with
    the simulator's ground truth, next to the control and additive baselines and the noise
    floor (half of the real cells predicting the other half).

    Parameters
    ----------
    n_cells, n_genes
        Size of the simulated screen.
    flow_steps
        Training steps of the flow (default: cellflow's).
    seed
        Seed of the simulation, the split and the model.
    out
        Directory to write ``results.csv`` and the trained model to (optional).
    progress
        Print a line at each step.
    progress_bar
        Show training progress bars (default: as ``progress``).

    Returns
    -------
    The per-condition results (one row per method, condition and cell type).
    """
    say = print if progress else (lambda *a, **k: None)
    start = time.perf_counter()
    say(f"[1/4] Simulating a screen: {n_cells} cells x {n_genes} genes, 2 cell types (gene-regulatory network)")
    adata = cf.datasets.simulate_perturbseq(n_cells=n_cells, n_genes=n_genes, n_cell_types=2, seed=seed)
    setup = {"perturbation_key": "perturbation", "control": "control", "covariate_keys": ["cell_type"]}
    cf.pp.setup(adata, **setup)
    frame = conditions_frame(adata)
    split = split_combinations(frame, n_combinations=4, n_singles=2, seed=seed)
    say(f"      held out: {', '.join(f'{c} ({k})' for c, k in split.kind.items())}")
    train = adata[split.train_mask].copy()
    cf.pp.setup(train, **setup)

    say(f"[2/4] Training on {train.n_obs} cells: scvi-tools VAE, then the latent rectified flow")
    model = cf.CellFlow(train, seed=seed)
    model.train(flow_steps=flow_steps, progress_bar=progress if progress_bar is None else progress_bar)
    history = model.history
    say(
        f"      VAE {history['vae_seconds']:.0f} s, flow {history['flow_seconds']:.0f} s, "
        f"reflow {history.get('reflow_seconds', 0.0):.0f} s"
    )

    say("[3/4] Generating the held-out conditions and scoring them against the real cells and the truth")
    truth = cf.datasets.true_means(adata)
    truth = truth.droplevel([n for n in truth.index.names if n not in ("perturbation", "cell_type")])

    def truth_rmse(pred: np.ndarray, condition: str, context: dict) -> dict:
        # Mean expression proportion of the predicted cells vs the simulator's exact one, on a log scale.
        predicted = np.expm1(pred).mean(axis=0) / 1e4
        true = truth.loc[(condition, context["cell_type"])].to_numpy()
        return {"truth_rmse": float(np.sqrt(np.mean((np.log1p(1e4 * predicted) - np.log1p(1e4 * true)) ** 2)))}

    baselines = [AdditiveBaseline().fit(train), ControlBaseline().fit(train)]
    results = score_held_out(
        adata,
        frame,
        split.held_out,
        model=model,
        baselines=baselines,
        covariate_keys=["cell_type"],
        seed=seed,
        extra_metrics=truth_rmse,
    )
    results["kind"] = results["condition"].map(split.kind)
    noise = results["method"] == "noise_floor"
    results.loc[noise, "truth_rmse"] = np.nan  # the noise floor has no predictions of its own to score

    say("[4/4] Results (mean over held-out conditions and cell types; lower is better for rmse/distance/mse)")
    with pd.option_context("display.width", 160, "display.precision", 3):
        for kind, part in results.groupby("kind"):
            say(f"\n  {kind}:")
            say(summary_table(part, DEMO_METRICS).to_string())
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        results.to_csv(out / "results.csv", index=False)
        model.save(out / "model", overwrite=True)
        say(f"\n  wrote {out / 'results.csv'} and the model to {out / 'model'}")
    say(f"\nDone in {time.perf_counter() - start:.0f} s.")
    return results
