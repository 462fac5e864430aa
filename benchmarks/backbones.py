"""Compare cellflow's velocity backbones (mlp, set_attention, mamba) on the same held-out splits.

Tasks (``--tasks``, comma-separated):

- ``combinations``: a simulated screen at steady state; held out: combinations whose singles
  are all measured (``split_combinations``).
- ``time_course``: a simulated 4-point time course (``n_timepoints=4``); held out: combinations
  of measured singles, at every time point. Held-out *singles* would need a token embedding
  that speaks about unseen genes, and the simulator gives none: its control cells vary through
  shared programs and count noise, not through the network, so ``token_embedding="expression"``
  (co-expression in control cells) carries no trace of a gene's targets (similarity of the
  embeddings and of the measured effects of 16 singles correlate at -0.02). Combinations of
  seen singles are the unseen perturbations a model can be asked about here.
- ``norman``: the Norman 2019 K562 CRISPRa subset, its five doubles with both singles measured
  (data and split of ``benchmarks/norman_combinations.py``).

``mlp`` and ``set_attention`` take time as part of the condition (one flow per time point,
controls to perturbed cells); ``mamba`` moves whole trajectories through the time points
(control trajectories chained by optimal transport). On data without time, ``mamba`` sees a
constant time column: a sequence of one time point. Every backbone trains its flow on one
shared VAE (``CellFlow.use_vae``) with the same ``train`` settings and library defaults
otherwise. Scores (``ConditionScorer``: energy distance on 50 PCs of the real cells, Pearson
delta on the top-20 changed genes) are per held-out condition, context and time point, next to
the control and additive baselines fitted on the training cells of the same time point, the
noise floor (half of the real cells predicting the other half) and ``vae_reconstruction``: the
held-out real cells encoded and decoded by the shared VAE (as ``score_reconstruction`` does), a
reference for how much of their effect the latent space keeps.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/backbones.py [--tasks time_course]
[--flow-steps 1500] [--seed 0] [--cells 6000] [--backbones mlp,mamba] [--source-shift additive]
[--backbone-kwargs '{"mamba": {"bidirectional": true}}'] [--results-page]`` (``--results-page`` writes one
table per task into the section ``backbones`` of ``docs/results.md``). A smoke run: ``--flow-steps 5
--vae-epochs 1 --cells 1200 --genes 50``. Over seeds: one run per ``--seed`` with ``--tasks
time_course --out DIR``, then ``--report DIR0/results.csv DIR1/results.csv ... --results-page``
(section ``backbones-seeds``: the time course's table, mean ± sd over seeds, and in how many
seeds each backbone beats the additive baseline at the late time points).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

BACKBONES = ("mlp", "set_attention", "mamba")
TASKS = ("combinations", "time_course", "norman")
BASELINES = ("vae_reconstruction", "additive", "control", "noise_floor")
TIME = "time"
LATE = 2  # the late time points of a time course: its last two
SETTINGS = (
    "flow_steps",
    "vae_epochs",
    "cells",
    "genes",
    "held_out",
    "latent_dim",
    "source_shift",
    "combination_offsets",
)


@dataclass
class Task:
    """Data and split of one comparison."""

    name: str
    adata: object  # all cells (AnnData), registered without time
    train_mask: np.ndarray
    held_out: list[str]
    covariate_keys: list[str]
    timed: bool  # whether the data is a time course (obs["time"])
    description: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="combinations,time_course", help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated backbones to compare")
    parser.add_argument("--flow-steps", type=int, default=1500)
    parser.add_argument("--vae-epochs", type=int, default=None, help="VAE epochs (default: cellflow's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, split and training")
    parser.add_argument("--cells", type=int, default=6000, help="cells of the simulated tasks")
    parser.add_argument("--genes", type=int, default=100, help="genes of the simulated tasks")
    parser.add_argument("--held-out", type=int, default=4, help="held-out combinations of the simulated tasks")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--source-shift", default="additive", choices=["additive", "none"])
    parser.add_argument(
        "--combination-offsets",
        default="sum",
        choices=["sum", "fit"],
        help="how an unseen combination's gene offsets add up (cf.CellFlow's combination_offsets; default: sum)",
    )
    parser.add_argument("--backbone-kwargs", type=json.loads, default={}, help="JSON, e.g. '{\"mamba\": {...}}'")
    parser.add_argument("--norman-data", type=Path, default=None, help="the Norman subset (.h5ad)")
    parser.add_argument("--out", type=Path, default=None, help="directory for results.csv")
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        help="results.csv files of runs with different --seed: the seeds' table of the time course only",
    )
    parser.add_argument(
        "--results-page", action="store_true", help="write the tables into docs/results.md (off by default)"
    )
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    for task in args.tasks:
        if task not in TASKS:
            parser.error(f"--tasks: unknown task {task!r}; choose from {', '.join(TASKS)}.")
    for backbone in args.backbones:
        if backbone not in BACKBONES:
            parser.error(f"--backbones: unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}.")
    if not isinstance(args.backbone_kwargs, dict) or set(args.backbone_kwargs) - set(BACKBONES):
        parser.error("--backbone-kwargs: give a JSON object keyed by backbone name.")
    return args


# ---------------------------------------------------------------- tasks
def simulated_task(name: str, args: argparse.Namespace) -> Task:
    """``combinations`` (steady state) or ``time_course`` (4 time points) from the simulator."""
    import cellflow as cf
    from cellflow.evaluation import conditions_frame, split_combinations

    timed = name == "time_course"
    adata = cf.datasets.simulate_perturbseq(
        args.cells,
        n_genes=args.genes,
        n_cell_types=2,
        n_timepoints=4 if timed else 1,
        n_perturbations=10,
        n_combinations=12,
        seed=args.seed,
    )
    keys = ["cell_type"]
    cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=keys)
    split = split_combinations(conditions_frame(adata), n_combinations=args.held_out, seed=args.seed)
    times = sorted(adata.obs[TIME].unique()) if timed else []
    what = f"time course at {', '.join(f'{t:g}' for t in times)} h" if timed else "steady state"
    description = (
        f"simulated screen ({what}): {adata.n_obs} cells x {adata.n_vars} genes, 2 cell types; "
        f"held out at every time point: {', '.join(split.held_out)} (both singles seen)"
    )
    return Task(name, adata, split.train_mask, list(split.held_out), keys, timed, description)


def norman_task(args: argparse.Namespace) -> Task:
    """The Norman 2019 subset and its five doubles with both singles measured."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import norman_combinations as norman

    import cellflow as cf
    from cellflow.evaluation import conditions_frame, split_combinations

    adata = norman.load_norman(args.norman_data or norman.DEFAULT_DATA)
    cf.pp.setup(adata, perturbation_key="perturbation", control="control")
    split = split_combinations(conditions_frame(adata), n_combinations=norman.N_DOUBLES, n_singles=0, seed=0)
    description = (
        f"Norman 2019 (K562 CRISPRa): {adata.n_obs} cells x {adata.n_vars} genes; held out: "
        f"{', '.join(sorted(split.held_out))}"
    )
    return Task("norman", adata, split.train_mask, sorted(split.held_out), [], False, description)


# ---------------------------------------------------------------- training
def training_data(task: Task, backbone: str):
    """The training cells, registered for ``backbone`` (a backbone over time always gets a time column)."""
    import cellflow as cf

    train = task.adata[task.train_mask].copy()
    over_time = backbone == "mamba"
    if over_time and not task.timed:
        train.obs[TIME] = 0.0  # one time point: a sequence of length 1
    time_key = TIME if (task.timed or over_time) else None
    cf.pp.setup(
        train, perturbation_key="perturbation", control="control", covariate_keys=task.covariate_keys, time_key=time_key
    )
    return train


def train_backbones(task: Task, args: argparse.Namespace) -> tuple[dict, float]:
    """One model per backbone, all on the VAE of the first; returns the models and the VAE's seconds."""
    import cellflow as cf

    models, first = {}, None
    for backbone in args.backbones:
        model = cf.CellFlow(
            training_data(task, backbone),
            backbone=backbone,
            latent_dim=args.latent_dim,
            source_shift=args.source_shift,
            backbone_kwargs=args.backbone_kwargs.get(backbone, {}),
            combination_offsets=args.combination_offsets,
            seed=args.seed,
        )
        if first is None:
            model.train_vae(epochs=args.vae_epochs, progress_bar=False)
            first = model
        else:
            model.use_vae(first)
        model.train_flow(steps=args.flow_steps, progress_bar=False)
        scale = model.history.get("gene_offset_combination_scale")
        offsets = "" if scale is None else f", gene offsets of unseen combinations x{scale:g} of their sum"
        print(f"  {backbone}: flow {model.history['flow_seconds']:.0f} s{offsets}", flush=True)
        models[backbone] = model
    return models, first.history["vae_seconds"]


# ---------------------------------------------------------------- scoring
def score(task: Task, models: dict, args: argparse.Namespace) -> pd.DataFrame:
    """Scores of every backbone and baseline per held-out condition, context and time point."""
    from cellflow.evaluation import AdditiveBaseline, ConditionScorer, ControlBaseline, conditions_frame
    from cellflow.evaluation._harness import _reconstruct
    from cellflow.metrics import log_normalize

    adata, keys = task.adata, task.covariate_keys
    frame = conditions_frame(adata)
    labels = frame["condition"].to_numpy()
    times = np.sort(adata.obs[TIME].unique()) if task.timed else np.array([np.nan])
    cell_time = adata.obs[TIME].to_numpy() if task.timed else np.full(adata.n_obs, np.nan)
    real = log_normalize(adata.X)
    scorer = ConditionScorer(real)
    baselines = [_baselines(task, t, (AdditiveBaseline, ControlBaseline)) for t in times]  # per time point
    rows = []
    for condition in task.held_out:
        contexts = frame.loc[labels == condition, keys].drop_duplicates().to_dict("records") if keys else [{}]
        for context in contexts:
            where = np.ones(adata.n_obs, dtype=bool)
            for key, value in context.items():
                where &= frame[key].to_numpy() == value
            at_time = [(cell_time == t) if task.timed else np.ones(adata.n_obs, dtype=bool) for t in times]
            n_cells = max(int((labels == condition)[where & m].sum()) for m in at_time)
            generated = {}
            for backbone, model in models.items():
                start = time.perf_counter()
                pred = _generate(model, condition, context, times, n_cells, args.seed)
                generated[backbone] = (pred, time.perf_counter() - start)
            for t, in_time, fitted in zip(times, at_time, baselines):
                truth = real[(labels == condition) & where & in_time]
                controls = real[(labels == "control") & where & in_time]
                label = {"condition": condition, **context, "time": t, "n_cells": len(truth)}
                for backbone, (pred, seconds) in generated.items():
                    mine = pred.obs[TIME].to_numpy() == t if task.timed else np.ones(pred.n_obs, dtype=bool)
                    cells = log_normalize(pred.X[np.flatnonzero(mine)[: len(truth)]])
                    share = seconds / len(times)  # one call covers every time point
                    rows.append(
                        {"method": backbone, **label, **scorer.score(cells, truth, controls)} | {"gen_s": share}
                    )
                for name, baseline in fitted.items():
                    cells = baseline.predict(condition, covariates=context, n_cells=len(truth), seed=args.seed)
                    rows.append({"method": name, **label, **scorer.score(cells, truth, controls)})
                # The real cells through the shared VAE: what a perfect flow would reach (its ceiling).
                counts = adata.X[np.flatnonzero((labels == condition) & where & in_time)]
                cells = _reconstruct(next(iter(models.values())), counts, args.seed)
                rows.append({"method": "vae_reconstruction", **label, **scorer.score(cells, truth, controls)})
                floor = scorer.noise_floor(truth, controls, seed=args.seed)
                rows.append({"method": "noise_floor", **label, **floor})
        print(f"  scored {condition}", flush=True)
    return pd.DataFrame(rows)


def _baselines(task: Task, t: float, classes) -> dict:
    """Baselines fitted on the training cells (of time point ``t`` for a time course)."""
    import cellflow as cf

    train = task.adata[task.train_mask].copy()
    if task.timed:
        train = train[train.obs[TIME].to_numpy() == t].copy()
    cf.pp.setup(train, perturbation_key="perturbation", control="control", covariate_keys=task.covariate_keys)
    return {cls.name: cls().fit(train) for cls in classes}


def _generate(model, condition: str, context: dict, times: np.ndarray, n_cells: int, seed: int):
    """The same ``cf.tl.generate`` call for every backbone; time points only where the model has them."""
    import cellflow as cf

    if model.setup.time_key is None:
        call_times = None
    elif np.isnan(times).all():
        call_times = model.time_points  # the constant time column of a backbone over time
    else:
        call_times = [float(t) for t in times]
    return cf.tl.generate(
        model, conditions=[condition], covariates=context or None, times=call_times, n_cells=n_cells, seed=seed
    )


# ---------------------------------------------------------------- report
def task_table(results: pd.DataFrame, models: dict, vae_seconds: float, timed: bool) -> pd.DataFrame:
    """Methods x (energy distance and Pearson delta top-20 per time point, training and generation seconds)."""
    order = [m for m in (*BACKBONES, *BASELINES) if m in set(results["method"])]
    per_time = results.groupby(["method", "time"], dropna=False)[["energy_distance", "pearson_delta_top20"]].mean()
    table = pd.DataFrame(index=order)
    for metric, short in (("energy_distance", "energy"), ("pearson_delta_top20", "pd_top20")):
        wide = per_time[metric].unstack("time")
        for t in wide.columns:
            name = f"{short}@{t:g}h" if timed else short
            table[name] = wide[t].reindex(order)
        if timed:
            table[f"{short} mean"] = wide.mean(axis=1).reindex(order)
    table["train_s"] = pd.Series({b: vae_seconds + m.history["flow_seconds"] for b, m in models.items()})
    table["flow_s"] = pd.Series({b: m.history["flow_seconds"] for b, m in models.items()})
    table["generate_s"] = results.groupby("method")["gen_s"].sum(min_count=1).reindex(order)
    return table


def _format(table: pd.DataFrame) -> str:
    """Scores to 3 decimals, seconds to 1, blanks for what a method does not have."""
    columns = {c: (lambda v: f"{v:.1f}") if c.endswith("_s") else (lambda v: f"{v:.3f}") for c in table.columns}
    text = table.astype(object).where(table.notna(), "")
    for column, fmt in columns.items():
        text[column] = [fmt(v) if v != "" else "" for v in text[column]]
    return text.to_string()


def _markdown(table: pd.DataFrame) -> str:
    """The task table as Markdown (for the results page), formatted as :func:`_format` formats it."""
    from _results import markdown_table

    formats = {c: "{:.1f}" if c.endswith("_s") else "{:.3f}" for c in table.columns}
    return markdown_table(table.rename_axis("method"), formats, index=True)


def seeds_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per method of the time course: energy and Pearson top-20 per time point (mean ± sd over seeds), late wins.

    ``late wins``: in how many seeds the method's energy distance, averaged over the held-out
    conditions at the last ``LATE`` time points, is below the additive baseline's.
    """
    course = results[results["task"] == "time_course"]
    if course.empty:
        sys.exit("--report: no time-course rows in these results (run with --tasks time_course).")
    runs = course.groupby("seed")["run"].nunique() if "run" in course else pd.Series(dtype=int)
    if (runs > 1).any():
        sys.exit(f"--report: seed(s) {list(runs.index[runs > 1])} come from more than one run; join one run per seed.")
    for setting in (c for c in SETTINGS if c in course):
        if course[setting].nunique(dropna=False) > 1:
            sys.exit(f"--report: the runs differ in {setting} ({sorted(map(str, course[setting].unique()))}).")
    per_seed = course.groupby(["method", "seed", "time"])[["energy_distance", "pearson_delta_top20"]].mean()
    times = np.sort(course["time"].unique())
    late = per_seed[per_seed.index.get_level_values("time").isin(times[-LATE:])]
    late_energy = late["energy_distance"].groupby(["method", "seed"]).mean().unstack("seed")
    order = [m for m in (*BACKBONES, *BASELINES) if m in late_energy.index]
    table = pd.DataFrame(index=order)
    for metric, short in (("energy_distance", "energy"), ("pearson_delta_top20", "pd_top20")):
        wide = per_seed[metric].unstack("time")
        mean, sd = wide.groupby("method").mean(), wide.groupby("method").std()
        for t in times:
            table[f"{short}@{t:g}h"] = [f"{mean.loc[m, t]:.3f} ± {sd.loc[m, t]:.3f}" for m in order]
    additive = late_energy.loc["additive"]

    def wins(method: str) -> str:  # over the seeds in which the method ran
        ran = late_energy.loc[method].notna()
        return f"{int((late_energy.loc[method][ran] < additive[ran]).sum())}/{int(ran.sum())}"

    table["late wins"] = [wins(m) if m in BACKBONES else "" for m in order]
    return table


def report(args: argparse.Namespace) -> pd.DataFrame:
    """The time course over the seeds of earlier runs (``--report``), printed and, if asked, on the results page."""
    from _results import markdown_table, provenance, write_results_section

    results = pd.concat([pd.read_csv(path).assign(run=str(path)) for path in args.report], ignore_index=True)
    if "seed" not in results or results["seed"].isna().any():
        sys.exit("--report needs results.csv files written with a 'seed' column (this script's --out).")
    table = seeds_table(results)
    seeds = sorted(results["seed"].unique())
    print(table.to_string())
    if args.results_page:
        intro = provenance(
            f"Simulated time course, seeds {', '.join(map(str, seeds))} (data, split and training each); mean ± sd "
            "over seeds of the mean over held-out conditions x contexts; energy distance lower is better, pd_top20 "
            f"(Pearson delta, top-20 genes) higher; late wins: seeds in which the backbone's energy distance over the "
            f"last {LATE} time points is below the additive baseline's."
        )
        section = "backbones-seeds" + _fit_suffix(results)
        write_results_section(section, f"{intro}\n\n{markdown_table(table.rename_axis('method'), index=True)}")
    return table


def _fit_suffix(results: pd.DataFrame) -> str:
    """``-fit-combinations`` for runs with ``--combination-offsets fit`` (their own results section), else ``""``."""
    fitted = "combination_offsets" in results and (results["combination_offsets"] == "fit").any()
    return "-fit-combinations" if fitted else ""


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Run every task and print one table per task (or, with ``--report``, the seeds' table of earlier runs)."""
    args = parse_args(argv)
    if args.report:
        return report(args)
    start = time.perf_counter()
    print(
        f"backbones {args.backbones}; flow steps {args.flow_steps}; seed {args.seed}; latent_dim {args.latent_dim}; "
        f"source_shift {args.source_shift}; backbone_kwargs {args.backbone_kwargs or 'defaults'}",
        flush=True,
    )
    everything, page = [], []
    for name in args.tasks:
        task = norman_task(args) if name == "norman" else simulated_task(name, args)
        print(f"\n[{name}] {task.description}", flush=True)
        models, vae_seconds = train_backbones(task, args)
        results = score(task, models, args)
        table = task_table(results, models, vae_seconds, task.timed)
        print(
            f"\n[{name}] mean over {len(task.held_out)} held-out conditions x contexts; energy distance lower is "
            f"better, pd_top20 (Pearson delta, top-20 genes) higher; train_s = shared VAE ({vae_seconds:.0f} s) + "
            "flow; generate_s = all held-out predictions"
        )
        print(_format(table))
        page.append(f"**{name}**: {task.description}; shared VAE {vae_seconds:.0f} s.\n\n{_markdown(table)}")
        results["task"] = name
        results["seed"] = args.seed
        for setting in SETTINGS:  # so that --report can refuse to join runs made differently
            results[setting] = getattr(args, setting)
        everything.append(results)
    results = pd.concat(everything, ignore_index=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        results.to_csv(args.out / "results.csv", index=False)
        print(f"\nwrote {args.out / 'results.csv'}")
    if args.results_page:
        from _results import provenance, write_results_section

        intro = provenance(
            f"Seed {args.seed}, {args.flow_steps} flow steps; mean over the held-out conditions x contexts; energy "
            "distance lower is better, pd_top20 (Pearson delta, top-20 genes) higher."
        )
        write_results_section("backbones" + _fit_suffix(results), "\n\n".join([intro, *page]))
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
