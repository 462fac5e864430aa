"""How much of each perturbation's effect the VAE keeps, at several KL weights, on training cells only.

A latent flow cannot predict an effect its VAE washes out. This script trains cellflow's VAE
(``train_vae``, defaults) at each ``--kl-weights`` value and seed, passes the real cells of every
perturbed condition through it (encode, decode a draw around each posterior mean with the cell's
own library size and sample counts, as generation decodes) and
scores them against the same cells (``cellflow.evaluation.score_reconstruction``): Pearson delta on
the top-20 genes (is the mean change from control kept?) and energy distance on 50 principal
components (is the distribution kept?), next to the noise floor. No held-out cell is used: on
``norman`` the five held-out doubles of ``norman_combinations.py`` are removed before training
and scoring, so the result can choose the KL weight of that benchmark without looking at its test
set. ``mcfaline`` (CRISPRi in three glioblastoma lines, contexts = lines) and ``papalexi``
(ECCITE-seq knockouts in THP-1, weak effects) are scored on all their cells.

Run: ``.venv/bin/python -u benchmarks/vae_fidelity.py [--dataset norman|mcfaline|papalexi]
[--kl-weights 1,0.6] [--seeds 2] [--data PATH] [--vae-epochs N] [--out DIR] [--results-page]``
(``--vae-epochs 1 --seeds 1`` is a smoke run, not a measurement). ``--results-page`` writes the
summary and the verdict into the section ``vae_fidelity-DATASET`` of ``docs/results.md``;
``--report DIR/fidelity.csv`` summarises an earlier run's ``--out`` instead of training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from norman_combinations import DEFAULT_DATA, N_DOUBLES  # noqa: E402

PAPALEXI_DATA = DEFAULT_DATA.parent / "papalexi2021_thp1_eccite_299g.h5ad"
METRICS = ["pearson_delta_top20", "energy_distance"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["norman", "mcfaline", "papalexi"], default="norman")
    parser.add_argument("--data", type=Path, default=None, help="the data file (default: ../shared/data/...)")
    parser.add_argument("--kl-weights", default="1,0.6", help="comma-separated KL weights of the VAE")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per KL weight")
    parser.add_argument("--vae-epochs", type=int, default=None, help="VAE epochs (default: cellflow's)")
    parser.add_argument("--out", type=Path, default=None, help="directory to write fidelity.csv to")
    parser.add_argument("--report", type=Path, default=None, help="an earlier run's fidelity.csv to summarise")
    parser.add_argument(
        "--results-page", action="store_true", help="write the summary into docs/results.md (off by default)"
    )
    args = parser.parse_args(argv)
    try:
        args.kl_weights = [float(w) for w in args.kl_weights.split(",")]
    except ValueError:
        parser.error(f"--kl-weights {args.kl_weights!r}: give numbers separated by commas, e.g. 1,0.6.")
    if not all(w > 0 for w in args.kl_weights):
        parser.error("--kl-weights: every weight must be positive.")
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: give at least 1.")
    if args.vae_epochs is not None and args.vae_epochs < 1:
        parser.error(f"--vae-epochs {args.vae_epochs}: give at least 1.")
    if args.data is None:
        args.data = PAPALEXI_DATA if args.dataset == "papalexi" else DEFAULT_DATA
    return args


def load(dataset: str, path: Path):
    """Training cells of ``dataset`` (set up for cellflow) and the covariates that define a context."""
    import anndata as ad

    import cellflow as cf
    from cellflow.evaluation import conditions_frame, split_combinations

    if not path.exists():
        sys.exit(f"Data file not found: {path}\nSee ../shared/data/README.md; pass its location with --data PATH.")
    adata = ad.read_h5ad(path)
    keys = []
    if dataset != "papalexi":
        if "dataset" not in adata.obs.columns:
            sys.exit(f"{path} has no obs['dataset'] column; is it the Norman/McFaline-Figueroa subset?")
        adata = adata[adata.obs["dataset"].astype(str) == {"norman": "norman19", "mcfaline": "mcfaline23"}[dataset]]
        adata = adata.copy()
        keys = ["cell_type"] if dataset == "mcfaline" else []
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str)
    for key in keys:
        adata.obs[key] = adata.obs[key].astype(str)
    cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=keys)
    if dataset == "norman":  # drop the test set of norman_combinations.py before anything is trained
        frame = conditions_frame(adata)
        split = split_combinations(frame, n_combinations=N_DOUBLES, n_singles=0, seed=0)
        adata = adata[~frame["condition"].isin(split.held_out).to_numpy()].copy()
        cf.pp.setup(adata, perturbation_key="perturbation", control="control")
    return adata, keys


def score_weight(adata, keys: list[str], kl_weight: float, seed: int, epochs: int | None = None) -> pd.DataFrame:
    """Train the VAE at one KL weight and seed; score the reconstruction of every perturbed condition."""
    import cellflow as cf
    from cellflow.evaluation import conditions_frame, score_reconstruction

    model = cf.CellFlow(adata, vae_kl_weight=kl_weight, seed=seed)
    start = time.perf_counter()
    model.train_vae(epochs=epochs, progress_bar=False)
    seconds = time.perf_counter() - start
    rows = score_reconstruction(model, adata, conditions_frame(adata), covariate_keys=keys, seed=seed)
    return rows.assign(kl_weight=kl_weight, seed=seed, vae_seconds=seconds)


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean over conditions per seed, then mean ± sd over seeds, per method and KL weight."""
    results = results.assign(kind=np.where(results["condition"].str.contains("+", regex=False), "doubles", "singles"))
    parts = [results.assign(kind="all")] + ([results] if results["kind"].eq("doubles").any() else [])
    frame = pd.concat(parts, ignore_index=True)
    per_seed = frame.groupby(["method", "kl_weight", "kind", "seed"])[METRICS].mean()
    grouped = per_seed.groupby(["method", "kl_weight", "kind"])
    mean, sd = grouped.mean(), grouped.std().fillna(0.0)
    return mean.map("{:.4f}".format) + " ± " + sd.map("{:.4f}".format)


def verdict(results: pd.DataFrame) -> str:
    """Which KL weight keeps the effects best: higher Pearson and lower energy, or no clear choice."""
    ours = results[results["method"] == "vae_reconstruction"]
    mean = ours.groupby(["kl_weight", "seed"])[METRICS].mean().groupby("kl_weight").mean()
    best_pearson = mean["pearson_delta_top20"].idxmax()
    best_energy = mean["energy_distance"].idxmin()
    if best_pearson == best_energy:
        return f"KL weight {best_pearson:g} keeps the effects best on both metrics."
    return f"no clear choice: Pearson prefers KL weight {best_pearson:g}, energy distance {best_energy:g}."


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Train, score and print the summary and the verdict."""
    args = parse_args(argv)
    start = time.perf_counter()
    if args.report is not None:
        results = pd.read_csv(args.report)
        cells = f"the training cells of {args.dataset}"
    else:
        adata, keys = load(args.dataset, args.data)
        cells = f"{adata.n_obs} training cells of {args.dataset}"
        print(f"{args.dataset}: {adata.n_obs} cells x {adata.n_vars} genes (training cells only)", flush=True)
        runs = []
        for kl_weight in args.kl_weights:
            for seed in range(args.seeds):
                rows = score_weight(adata, keys, kl_weight, seed, args.vae_epochs)
                ours = rows[rows["method"] == "vae_reconstruction"][METRICS].mean()
                print(
                    f"  KL {kl_weight:g} seed {seed}: VAE {rows['vae_seconds'].iloc[0]:.0f} s, "
                    f"Pearson top-20 {ours['pearson_delta_top20']:.4f}, energy {ours['energy_distance']:.4f}",
                    flush=True,
                )
                runs.append(rows)
        results = pd.concat(runs, ignore_index=True)
    n_seeds = results["seed"].nunique()
    with pd.option_context("display.width", 160):
        print(f"\nmean over conditions, mean ± sd over {n_seeds} seed(s):")
        print(summary(results).to_string())
    print("\n" + verdict(results))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        results.to_csv(args.out / "fidelity.csv", index=False)
        print(f"wrote {args.out / 'fidelity.csv'}")
    if args.results_page:
        from _results import markdown_table, provenance, write_results_section

        intro = provenance(f"{cells}; mean over conditions, mean ± sd over {n_seeds} seed(s).")
        table = markdown_table(summary(results), index=True)
        write_results_section(f"vae_fidelity-{args.dataset}", f"{intro}\n\n{table}\n\n{verdict(results)}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
