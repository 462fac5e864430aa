"""Unseen single perturbations: predicted from expression-derived gene embeddings, against the training mean.

A perturbation never measured can only be predicted from what is known about its gene. With
``token_embedding="expression"`` a token is the perturbed gene's co-expression profile in the
control cells, so any *measured* gene can be embedded. The bar is the training-mean baseline
(control cells shifted by the mean change of every training perturbation: Ahlmann-Eltze et al.,
Nat Methods 2025, found that deep models rarely beat it on unseen singles), next to the linear
model on PCA gene embeddings of that paper, the control baseline and the noise floor.

Data: Papalexi et al. 2021 (THP-1, CRISPR knockouts; ``../shared/data``), whose targets include
nine measured genes. The Norman subset cannot test this: only one of its 31 perturbed genes
(TMSB4X) is among its 500 measured genes, and no embedding table of its genes is available
offline. Expression embeddings need every training token to be a measured gene, so the models
train on the control cells and the nine embeddable knockouts only, split into ``--folds`` folds;
each fold is held out in turn (a model per fold and seed, the other folds in training, as for the
baselines); each held-out single is
predicted with as many cells as real ones, ``--draws`` times, and scored against its real cells.
A verdict is a win only where cellflow's seed mean beats the training mean's by more than the seed
spread.

Run: ``.venv/bin/python -u benchmarks/unseen_singles.py --seed S [--folds 3] [--draws 3] --out DIR``
per seed, then ``--report DIR0/results.csv ... --results-page`` (section ``unseen_singles``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "papalexi2021_thp1_eccite_299g.h5ad"
METHODS = ["cellflow", "vae_ceiling", "training_mean", "linear", "control", "noise_floor"]
METRICS = ["energy_distance", "pearson_delta_top20", "energy_distance_unsquared", "mmd"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Papalexi 2021 subset (.h5ad)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the folds are the same for every seed)")
    parser.add_argument("--folds", type=int, default=3, help="folds of the embeddable knockouts (each held out once)")
    parser.add_argument("--fold", type=int, nargs="*", default=None, help="run only these folds (0-based)")
    parser.add_argument("--draws", type=int, default=3, help="draws of every prediction (scores averaged)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few VAE epochs and flow steps")
    parser.add_argument("--out", type=Path, default=None, help="directory for results.csv")
    parser.add_argument("--report", type=Path, nargs="+", default=None, help="earlier runs' results.csv to summarise")
    parser.add_argument("--results-page", action="store_true", help="write the section of docs/results.md")
    args = parser.parse_args(argv)
    if args.draws < 1 or args.folds < 2:
        parser.error("--draws must be at least 1 and --folds at least 2.")
    if args.report is None and not args.data.exists():
        parser.error(f"--data {args.data}: no such file (the shared data folder holds it; see its README).")
    return args


def embeddable_folds(adata, folds: int) -> list[list[str]]:
    """The knockouts whose target is a measured gene, split into ``folds`` folds (sorted, then dealt in turn)."""
    genes = set(map(str, adata.var_names))
    perturbations = sorted(set(adata.obs["perturbation"].astype(str)) - {"control"})
    embeddable = [p for p in perturbations if p in genes]
    return [embeddable[i::folds] for i in range(folds)]


def run_fold(adata, frame, folds, held_out: list[str], seed: int, draws: int, quick: bool = False) -> pd.DataFrame:
    """Train on the control cells and the other folds' knockouts, and score the held-out singles for every method."""
    import cellflow as cf
    from cellflow.evaluation import ControlBaseline, LinearBaseline, TrainingMeanBaseline, score_held_out

    # Expression embeddings need every training token among the measured genes: the other knockouts stay out.
    usable = frame["condition"].isin(["control", *(c for fold in folds for c in fold)]).to_numpy()
    train = adata[usable & ~frame["condition"].isin(held_out).to_numpy()].copy()
    cf.pp.setup(train, perturbation_key="perturbation", control="control")
    model = cf.CellFlow(train, token_embedding="expression", seed=seed)
    model.train(progress_bar=False, **({"vae_epochs": 2, "flow_steps": 20} if quick else {}))
    baselines = [b.fit(train) for b in (TrainingMeanBaseline(), LinearBaseline(), ControlBaseline())]
    rows = score_held_out(adata, frame, held_out, model=model, baselines=baselines, seed=seed, draws=draws)
    seconds = model.history["vae_seconds"] + model.history["flow_seconds"]
    print(f"  seed {seed}, held out {', '.join(held_out)}: trained in {seconds:.0f} s", flush=True)
    return rows.assign(seed=seed, fold=",".join(held_out))


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean over draws and held-out singles per seed, then mean ± sd over seeds, per method."""
    per_seed = results.groupby(["method", "seed"])[METRICS].mean().groupby("method")
    mean, sd = per_seed.mean(), per_seed.std()
    table = mean.map("{:.4f}".format)
    if results["seed"].nunique() > 1:
        table = table + " ± " + sd.fillna(0.0).map("{:.4f}".format)
    return table.reindex([m for m in METHODS if m in table.index])


def verdicts(results: pd.DataFrame) -> list[str]:
    """cellflow against the training mean on each metric: a win only beyond the seed spread."""
    per_seed = results.groupby(["method", "seed"])[METRICS].mean()
    lines = []
    for metric in ("energy_distance", "pearson_delta_top20", "mmd"):
        ours, bar = (per_seed.loc[m, metric] for m in ("cellflow", "training_mean"))
        sign = 1.0 if metric == "pearson_delta_top20" else -1.0
        margin = sign * (ours.mean() - bar.mean())
        spread = max(ours.std(ddof=1), bar.std(ddof=1)) if len(ours) > 1 else np.nan
        if margin <= 0:
            verdict = "NOT better"
        elif np.isnan(spread):
            verdict = "better (one seed: no spread to judge)"
        else:
            verdict = "WIN (by more than the seed spread)" if margin > spread else "better, within the seed spread"
        lines.append(f"{metric}: cellflow {ours.mean():.4f} vs training_mean {bar.mean():.4f} -> {verdict}")
    return lines


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Run the folds of one seed (or summarise earlier runs) and print the summary."""
    args = parse_args(argv)
    if args.report is not None:
        results = pd.concat([pd.read_csv(p) for p in args.report], ignore_index=True)
    else:
        import anndata as ad

        import cellflow as cf
        from cellflow.evaluation import conditions_frame

        adata = ad.read_h5ad(args.data)
        cf.pp.setup(adata, perturbation_key="perturbation", control="control")
        frame = conditions_frame(adata)
        folds = embeddable_folds(adata, args.folds)
        chosen = range(len(folds)) if args.fold is None else args.fold
        print(f"Papalexi 2021 (THP-1, CRISPR knockouts): {adata.n_obs} cells x {adata.n_vars} genes")
        print(f"embeddable knockouts in {len(folds)} folds: " + " | ".join(", ".join(f) for f in folds))
        results = pd.concat(
            [run_fold(adata, frame, folds, folds[i], args.seed, args.draws, args.quick) for i in chosen]
        )
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            results.to_csv(args.out / "results.csv", index=False)
    n_singles, seeds = results["condition"].nunique(), sorted(int(s) for s in results["seed"].unique())
    print(f"\n{n_singles} unseen singles, seeds {seeds}, {results['draw'].nunique()} draw(s) each")
    with pd.option_context("display.width", 160):
        print(summary(results).to_string())
    lines = verdicts(results)
    print("\n".join(lines))
    if args.results_page:
        from _results import markdown_table, provenance, write_results_section

        parts = [
            provenance(
                f"Papalexi 2021, {n_singles} knockouts of measured genes held out in folds (a model per fold "
                f"and seed), seeds {', '.join(map(str, seeds))}; {results['draw'].nunique()} draw(s) of every "
                "prediction, as many cells as real ones. Mean over the draws and the held-out singles, then "
                "mean ± sd over the seeds."
            ),
            markdown_table(summary(results), index=True),
            "\n".join(f"- {line}" for line in lines),
        ]
        write_results_section("unseen_singles", "\n\n".join(parts))
    return results


if __name__ == "__main__":
    main()
