"""How well trained Norman models reproduce the conditions they were trained on.

A model that cannot reproduce its own training conditions cannot be trusted on unseen ones, and
the held-out benchmark (``norman_combinations.py``) does not show it: its five doubles are a few
conditions of one kind. This script loads the models that ``norman_combinations.py --save-models
DIR`` saved (one per seed, trained with the five doubles held out), generates every *training*
condition of the Norman subset with at least 50 cells (singles and the other doubles), as many
cells as real ones, and scores them against their real cells with the scorer of the held-out
benchmark, next to:

- ``vae_ceiling``: the real cells through the model's VAE, decoded as generation decodes (a
  draw around each posterior mean, the cells' own library sizes): what the VAE alone makes of
  them, and what a flow that generated their latents exactly would reach;
- ``latent_arithmetic``: control latents shifted by the sum of the tokens' mean latent shifts (and
  library sizes by the sum of their library shifts), decoded as cellflow decodes; on a single it
  is the model with a zero velocity field (its own measured shift), so there it shows what the
  flow adds; on a double whose singles were not measured it lacks what the model measured;
- ``additive``: control cells shifted by the sum of the condition's tokens' measured mean
  changes (for a single, its own measured mean change);
- ``control`` (no change) and ``noise_floor`` (half the real cells predicting the other half).

Run: ``.venv/bin/python -u benchmarks/training_fit.py --models DIR/seed0 DIR/seed1 ... [--draws 3]
[--out DIR] [--results-page]``, or ``--report DIR/results.csv`` to summarise an earlier run.
``--results-page`` writes the section ``training_fit`` of ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from norman_combinations import DEFAULT_DATA, N_DOUBLES, load_norman  # noqa: E402

METHODS = ["cellflow", "latent_arithmetic", "vae_ceiling", "additive", "control", "noise_floor"]
METRICS = ["energy_distance", "pearson_delta_top20", "energy_distance_unsquared", "mmd"]
MIN_CELLS = 50


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, nargs="+", default=[], help="saved models, one per seed")
    parser.add_argument("--report", type=Path, default=None, help="an earlier run's results.csv to summarise")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Norman/McFaline-Figueroa subset (.h5ad)")
    parser.add_argument("--draws", type=int, default=3, help="draws of every prediction (scores averaged)")
    parser.add_argument("--out", type=Path, default=None, help="directory for results.csv")
    parser.add_argument("--results-page", action="store_true", help="write the section of docs/results.md")
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws {args.draws}: give at least 1.")
    if not args.models and args.report is None:
        parser.error("give --models DIR/seed0 ... (or --report RUN/results.csv).")
    missing = [str(m) for m in args.models if not (m / "config.json").exists()]
    if missing:
        parser.error(
            f"--models: no saved model at {', '.join(missing)} (save them with norman_combinations.py "
            "--save-models DIR)."
        )
    return args


def score_model(path: Path, adata, frame, draws: int) -> pd.DataFrame:
    """Every training condition of the model at ``path``, scored for every method (one row per condition and draw)."""
    import cellflow as cf
    from cellflow.evaluation import AdditiveBaseline, ControlBaseline, score_held_out
    from cellflow.evaluation._latent import LatentArithmeticBaseline

    model = cf.CellFlow.load(path)
    trained_on = set(model.setup.conditions)
    held_out = sorted(set(frame["condition"]) - trained_on)
    if len(held_out) != N_DOUBLES:
        print(
            f"warning: {path} was trained without {len(held_out)} conditions ({', '.join(held_out)}), not {N_DOUBLES}"
        )
    train_mask = frame["condition"].isin(trained_on).to_numpy()
    train, train_frame = adata[train_mask].copy(), frame[train_mask]
    cf.pp.setup(train, perturbation_key="perturbation", control="control")
    counts = train_frame["condition"].value_counts()
    conditions = sorted(c for c, n in counts.items() if c != "control" and n >= MIN_CELLS)
    baselines = [LatentArithmeticBaseline(model).fit(train)]
    baselines += [AdditiveBaseline().fit(train), ControlBaseline().fit(train)]
    seed = int(model.config.seed)
    rows = score_held_out(train, train_frame, conditions, model=model, baselines=baselines, seed=seed, draws=draws)
    return rows.assign(seed=seed, model=str(path))


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean over draws and conditions per seed, then mean ± sd over seeds, per method (and singles, doubles)."""
    kinds = {"all": results}
    kinds["singles"] = results[~results["condition"].str.contains("+", regex=False)]
    kinds["doubles"] = results[results["condition"].str.contains("+", regex=False)]
    tables = []
    for kind, rows in kinds.items():
        per_seed = rows.groupby(["method", "seed"])[METRICS].mean().groupby("method")
        mean, sd = per_seed.mean(), per_seed.std()
        table = mean.map("{:.4f}".format)
        if rows["seed"].nunique() > 1:
            table = table + " ± " + sd.map("{:.4f}".format)
        table = table.reindex([m for m in METHODS if m in table.index])
        table.index = [f"{m} ({kind}, {rows['condition'].nunique()})" for m in table.index]
        tables.append(table)
    return pd.concat(tables)


def worst_conditions(results: pd.DataFrame, n: int = 8) -> pd.DataFrame:
    """The conditions cellflow reproduces worst (energy distance, mean over seeds), next to the other methods."""
    table = results.pivot_table(index="condition", columns="method", values="energy_distance", aggfunc="mean")
    table = table[[m for m in METHODS if m in table.columns]]
    return table.sort_values("cellflow", ascending=False).head(n)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Score the saved models on their training conditions and print (and optionally write) the summary."""
    args = parse_args(argv)
    import cellflow as cf
    from cellflow.evaluation import conditions_frame

    if args.report is not None:
        results = pd.read_csv(args.report)
    else:
        adata = load_norman(args.data)
        cf.pp.setup(adata, perturbation_key="perturbation", control="control")
        frame = conditions_frame(adata)
        results = pd.concat([score_model(p, adata, frame, args.draws) for p in args.models], ignore_index=True)
    n_conditions, draws = results["condition"].nunique(), results["draw"].nunique()
    print(f"\n{n_conditions} training conditions, {results['seed'].nunique()} model(s), {draws} draw(s) each")
    with pd.option_context("display.width", 160):
        print(summary(results).to_string())
        print("\nenergy distance of the conditions cellflow reproduces worst:")
        print(worst_conditions(results).round(3).to_string())
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        results.to_csv(args.out / "results.csv", index=False)
    if args.results_page:
        from _results import markdown_table, provenance, write_results_section

        seeds = ", ".join(str(s) for s in sorted(results["seed"].unique()))
        parts = [
            provenance(
                f"{n_conditions} training conditions (at least {MIN_CELLS} cells) of models trained with the "
                f"five doubles held out, seeds {seeds}; {draws} draw(s) of every prediction, as many "
                "cells as real ones. Mean over the draws and the conditions, then mean ± sd over the seeds."
            ),
            markdown_table(summary(results), index=True),
            "Energy distance of the conditions cellflow reproduces worst (mean over the seeds):\n\n"
            + markdown_table(worst_conditions(results).map("{:.3f}".format), index=True),
        ]
        write_results_section("training_fit", "\n\n".join(parts))
    return results


if __name__ == "__main__":
    main()
