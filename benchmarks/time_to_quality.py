"""Quality versus time: cellflow at several training budgets against theislab's CellFlow at several.

What it measures. The split of ``norman_combinations.py`` (five held-out doubles of the Norman
subset whose singles were measured; every other cell trains). Each *point* is one method at one
training budget: its wall time from the raw training counts to the predictions of the five doubles
(as many predicted cells as each real double has), and their quality against the real cells:
Pearson delta of the top-20 genes, the energy distance (scPerturb's, squared distances), the
energy distance with unsquared distances and the MMD (RBF, median heuristic), each distance on 50
principal components under two bases: fitted on all real cells (``all``, the protocol of
``norman_combinations.py``) and on the training cells only (``train``, which the held-out cells
never shape). The additive baseline is scored beside them.

cellflow's points (``OURS``) are its presets (``fast``, ``default``, ``long``: the VAE's steps, the
flow's steps and width, reflow) and one shorter VAE. The peer's points (``PEER``, theislab's
``cellflow-tools``, run in its own environment by ``_peer_cellflow_runner.py`` as
``peer_cellflow.py`` does) vary its iterations and its OT coupling, at batch 256 with every layer
of its velocity field 512 wide and one parameter update per iteration, generating with 20 Euler
steps: the cheaper settings a user would try first. One point keeps its default adaptive solver,
whose time grows as training shortens; its authors' own Norman run (200,000 iterations of batch
1024) is in ``peer_cellflow.py``. The peer's time counts preprocessing, set-up, training and
generation, as ``peer_cellflow.py`` does; ours counts building the model, training (VAE, latent
pass, flow, reflow) and generation with its default solver.

Matched conditions. One point at a time (never two at once), all on the same ``--threads`` CPUs
(thread counts and the process's affinity, which JAX's thread pool follows), the same split and
the same number of generated cells.

Run: ``.venv/bin/python -u benchmarks/time_to_quality.py [--threads 2] [--seeds 0 1 2]
[--ours NAME ...] [--peer NAME ...] [--skip-peer] [--out DIR] [--results-page]``. The page's
numbers (section ``time_to_quality``, with the plot ``docs/images/time_to_quality.png``) come from
``--results-page``; ``--report DIR/results.csv ...`` rebuilds the table and the plot from earlier runs.

On a GPU: ``--hardware gpu`` runs both methods on the first GPU (cellflow through Lightning's
``accelerator="auto"``, the peer with ``JAX_PLATFORMS=cuda``); its page section is
``time_to_quality_gpu``. The page's GPU numbers came from two runs on the GPU machine,
``--hardware gpu --threads 8 --seeds 0 --skip-peer --out OURS`` and ``--hardware gpu --threads 8
--seeds 0 --ours --peer peer_i1000_ot peer_i2000_ot peer_i4000_ot --out PEER``, joined here with
``--report OURS/results.csv PEER/results.csv --hardware gpu --results-page``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# cellflow's budgets: a preset (cellflow.models.PRESETS), with the VAE's target steps changed for one.
OURS = {
    "cellflow_vae1800": {"preset": "fast", "vae_kwargs": {"target_steps": 1800}},
    "cellflow_fast": {"preset": "fast", "vae_kwargs": {}},
    "cellflow_default": {"preset": "default", "vae_kwargs": {}},
    "cellflow_long": {"preset": "long", "vae_kwargs": {}},
}
# The peer's budgets: iterations of batch 256, OT epsilon (0: independent pairs), Euler steps of
# generation (0: its default adaptive solver, Tsit5 at tolerances 1e-5).
PEER = {
    "peer_i500_ot": {"iterations": 500, "epsilon": 0.1, "ode_steps": 20},
    "peer_i1000_ot": {"iterations": 1000, "epsilon": 0.1, "ode_steps": 20},
    "peer_i2000_ot": {"iterations": 2000, "epsilon": 0.1, "ode_steps": 20},
    "peer_i4000_ot": {"iterations": 4000, "epsilon": 0.1, "ode_steps": 20},
    "peer_i1000_random": {"iterations": 1000, "epsilon": 0.0, "ode_steps": 20},
    "peer_i2000_random": {"iterations": 2000, "epsilon": 0.0, "ode_steps": 20},
    "peer_i2000_ot_adaptive": {"iterations": 2000, "epsilon": 0.1, "ode_steps": 0},
}
PEER_SETTINGS = {"batch_size": 256, "width": 512, "accumulate": 1, "lr": 1e-4}
METRICS = ["pearson_delta_top20", "energy_distance", "energy_distance_unsquared", "mmd"]
BASES = ["all", "train"]


def parse_args(argv: list[str] | None = None, default_data: Path | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data, help="the Norman/McFaline-Figueroa subset (.h5ad)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every point (both methods)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training and sampling seeds")
    parser.add_argument("--ours", nargs="*", default=list(OURS), choices=list(OURS), help="cellflow's points")
    parser.add_argument("--peer", nargs="+", default=list(PEER), choices=list(PEER), help="the peer's points")
    parser.add_argument("--skip-peer", action="store_true", help="cellflow's points only")
    parser.add_argument("--peer-venv", type=Path, default=None, help="the peer's environment (peer_cellflow.py's)")
    parser.add_argument(
        "--hardware",
        choices=["cpu", "gpu"],
        default="cpu",
        help="cpu: both methods on --threads CPUs; gpu: both on the first GPU (results section time_to_quality_gpu)",
    )
    parser.add_argument("--out", type=Path, default=None, help="directory for results.csv")
    parser.add_argument("--report", type=Path, nargs="+", default=None, help="results.csv files to summarise only")
    parser.add_argument("--results-page", action="store_true", help="write the table and plot into docs/")
    return parser.parse_args(argv)


class Scorer:
    """Scores predictions of the held-out doubles against their real cells under both PCA bases."""

    def __init__(self, adata, frame, train, held_out: list[str]) -> None:
        from cellflow.evaluation._scoring import ConditionScorer
        from cellflow.metrics import log_normalize

        real = log_normalize(adata.X)
        self.scorers = {"all": ConditionScorer(real), "train": ConditionScorer(log_normalize(train.X))}
        condition = frame["condition"].to_numpy()
        self.truth = {label: real[condition == label] for label in held_out}
        self.control = real[condition == "control"]
        self.held_out = held_out

    def score(self, predictions: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics averaged over the held-out doubles, ``{metric}_{basis}`` (Pearson: one, basis-free)."""
        rows = []
        for label in self.held_out:
            row = {}
            for basis, scorer in self.scorers.items():
                scores = scorer.score(predictions[label], self.truth[label], self.control)
                row |= {f"{m}_{basis}": scores[m] for m in METRICS if m != "pearson_delta_top20"}
                row["pearson_delta_top20"] = scores["pearson_delta_top20"]
            rows.append(row)
        return pd.DataFrame(rows).mean().to_dict()


def run_ours(
    name: str, train, held_out: list[str], counts: dict[str, int], seed: int, hardware: str = "cpu"
) -> tuple[dict, float]:
    """Train cellflow at budget ``name`` on ``hardware`` ("cpu" or "gpu") and generate the held-out doubles.

    Returns the predictions (log-normalised, per double) and the seconds from counts to predictions.
    """
    import cellflow as cf
    from cellflow.metrics import log_normalize

    budget = OURS[name]
    start = time.perf_counter()
    model = cf.CellFlow(train, seed=seed, preset=budget["preset"])
    model.train(progress_bar=False, vae_kwargs=budget["vae_kwargs"], accelerator=hardware)
    predictions = {}
    for label in held_out:
        cells = cf.tl.generate(model, conditions=[label], n_cells=counts[label], seed=seed)
        predictions[label] = log_normalize(cells.X)
    seconds = time.perf_counter() - start
    history = model.history
    print(
        f"  {name} seed {seed}: {seconds:.1f} s (VAE {history['vae_seconds']:.1f}, flow {history['flow_seconds']:.1f}, "
        f"reflow {history.get('reflow_seconds', 0.0):.1f})",
        flush=True,
    )
    return predictions, seconds


def run_peer(
    name: str, python: Path, inputs: tuple[Path, Path], held_out: list[str], seed: int, args: argparse.Namespace
) -> tuple[dict, float]:
    """Train the peer at budget ``name`` in its environment (on ``args.hardware``); its predictions and seconds."""
    import os
    import subprocess

    import anndata as ad

    budget = PEER[name] | PEER_SETTINGS
    with tempfile.TemporaryDirectory(prefix="ttq-peer-") as tmp:
        out = Path(tmp)
        command = [str(python), "-I", "-u", str(HERE / "_peer_cellflow_runner.py"), "--train", str(inputs[0])]
        command += ["--held-out", str(inputs[1]), "--out", str(out), "--seed", str(seed)]
        for option in ("iterations", "batch_size", "width", "accumulate", "lr", "epsilon", "ode_steps"):
            command += [f"--{option.replace('_', '-')}", str(budget[option])]
        # On a GPU, JAX allocates as it goes (not 75% of the card up front), as torch does.
        platform = {"JAX_PLATFORMS": "cuda", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        env = os.environ | {"JAX_PLATFORMS": "cpu", "TQDM_DISABLE": "1"} | (platform if args.hardware == "gpu" else {})
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the peer runner failed at {name}:\n{done.stderr[-3000:]}")
        timings = json.loads((out / "timings.json").read_text())
        result = ad.read_h5ad(out / "predictions.h5ad")
    labels = result.obs["condition"].to_numpy()
    predictions = {label: np.asarray(result.X[labels == label]) for label in held_out}
    print(
        f"  {name} seed {seed}: {timings['end_to_end_seconds']:.1f} s (preprocess {timings['preprocess_seconds']:.1f}, "
        f"train {timings['train_seconds']:.1f}, generate {timings['generate_seconds']:.1f}; {hardware_words(args)})",
        flush=True,
    )
    return predictions, timings["end_to_end_seconds"]


def hardware_words(args: argparse.Namespace) -> str:
    """The device of every point, in words: the GPU's name and torch's version, or the thread count."""
    if args.hardware == "gpu":
        import torch

        return f"one {torch.cuda.get_device_name(0)} (torch {torch.__version__}, {args.threads} CPU threads)"
    return f"{args.threads} threads"


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean (and sd over seeds) of every point's time and metrics; a point run twice with one seed counts once."""
    # Runs joined by --report each score the additive baseline for their seeds: keep one row per seed.
    results = results.drop_duplicates(subset=["point", "seed"], keep="first")
    columns = ["seconds", *[c for c in results.columns if c not in ("point", "family", "seed", "seconds")]]
    grouped = results.groupby(["family", "point"])[columns]
    table = grouped.mean()
    table["seeds"] = results.groupby(["family", "point"])["seed"].nunique()
    spread = grouped.std().add_suffix("_sd")
    return table.join(spread).reset_index().sort_values(["family", "seconds"])


def plot(table: pd.DataFrame, path: Path) -> None:
    """Each metric against time (distances on the PCs of all real cells), one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["pearson_delta_top20", *[f"{m}_all" for m in METRICS[1:]]]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.3))
    colours = {"cellflow": "tab:blue", "peer": "tab:orange"}
    for ax, metric in zip(axes, panels, strict=True):
        for family, group in table[table["family"] != "additive"].groupby("family"):
            ax.errorbar(
                group["seconds"],
                group[metric],
                yerr=group[f"{metric}_sd"].fillna(0.0),
                marker="o",
                ls="-",
                color=colours.get(family),
                label="theislab CellFlow" if family == "peer" else family,
                capsize=2,
            )
        additive = table[table["family"] == "additive"]
        if not additive.empty:
            ax.axhline(float(additive[metric].iloc[0]), color="grey", ls="--", label="additive")
        ax.set_xlabel("seconds, counts to predictions")
        ax.set_title(metric.replace("_all", "").replace("_", " "), fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


PRIMARY = ["pearson_delta_top20", "energy_distance_all", "mmd_all"]


def dominance_lines(table: pd.DataFrame) -> list[str]:
    """For each of the peer's points: cellflow's points no slower that beat it on every primary metric (seed means)."""
    ours = table[table["family"] == "cellflow"]
    lines = []
    for _, peer in table[table["family"] == "peer"].iterrows():
        faster = ours[ours["seconds"] <= peer["seconds"]]
        better = [
            point["point"]
            for _, point in faster.iterrows()
            if point["pearson_delta_top20"] > peer["pearson_delta_top20"]
            and all(point[m] < peer[m] for m in PRIMARY[1:])
        ]
        verdict = (
            f"beaten on all three by {', '.join(better)}" if better else "not beaten on all three by a point as fast"
        )
        lines.append(f"- {peer['point']} ({peer['seconds']:.0f} s): {verdict}")
    return lines


def write_results_page(table: pd.DataFrame, args: argparse.Namespace, device: str | None) -> None:
    """The table (mean ± sd over seeds), the dominance lines and the plot into docs/.

    Section ``time_to_quality`` (``time_to_quality_gpu`` for ``--hardware gpu``). ``device``: where
    the points ran, in words, when the results record it; otherwise this machine at ``--threads``.
    """
    from _results import markdown_table, provenance, write_results_section

    section = "time_to_quality" + ("_gpu" if args.hardware == "gpu" else "")
    image = HERE.parent / "docs" / "images" / f"{section}.png"
    plot(table, image)
    columns = ["pearson_delta_top20", *[f"{m}_{b}" for m in METRICS[1:] for b in BASES]]
    shown = pd.DataFrame(index=table["point"])
    shown["seconds"] = [f"{v:,.1f}" for v in table["seconds"]]
    shown["seeds"] = table["seeds"].to_numpy()
    for column in columns:
        means, sds = table[column].to_numpy(), table[f"{column}_sd"].to_numpy()
        shown[column] = [
            f"{m:.4f}" + ("" if np.isnan(sd) else f" ± {sd:.4f}") for m, sd in zip(means, sds, strict=True)
        ]
    hardware = device or f"{args.threads} threads"
    measured_elsewhere = f"points measured on {device}, from the runs' results.csv" if args.report and device else None
    intro = provenance(
        f"Five held-out Norman doubles, as many predicted cells as real ones; {hardware} per point, one "
        "point at a time; mean ± sd over seeds. Distances on 50 PCs of all real cells (`_all`) or of the training "
        "cells (`_train`); lower is better, Pearson higher. Peer: cellflow-tools at batch 256, width 512, one update "
        "per iteration, lr 1e-4, 20 Euler steps of generation unless `_adaptive`.",
        machine=measured_elsewhere,
    )
    verdicts = "Each of the peer's points against cellflow's points that took no longer (Pearson top-20, energy "
    verdicts += "distance and MMD on all cells' PCs, seed means):\n\n" + "\n".join(dominance_lines(table))
    table_text = markdown_table(shown, index=True)
    body = f"{intro}\n\n{table_text}\n\n{verdicts}\n\n![quality against time](images/{image.name})"
    write_results_section(section, body)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Run every point (or read earlier runs), print the table of points, optionally write the page."""
    import norman_combinations as nc  # sibling scripts: benchmarks/ is on sys.path above
    import peer_cellflow as pc

    args = parse_args(argv, default_data=nc.DEFAULT_DATA)
    if args.report:
        results = pd.concat([pd.read_csv(path) for path in args.report], ignore_index=True)
    else:
        results = run_points(args, nc, pc)
    device = measured_device(results, args)
    table = summarise(results.drop(columns=["hardware", "device"], errors="ignore"))
    with pd.option_context("display.width", 250, "display.precision", 4, "display.max_columns", 40):
        shown = [
            c for c in table.columns if c in ["pearson_delta_top20", *[f"{m}_{b}" for m in METRICS[1:] for b in BASES]]
        ]
        print(table[["family", "point", "seconds", "seeds", *shown]].to_string(index=False))
    if args.results_page:
        write_results_page(table, args, device)
    return table


def measured_device(results: pd.DataFrame, args: argparse.Namespace) -> str | None:
    """The device the points of ``results`` ran on, in words (``None`` if not recorded: runs of an older version).

    Refuses results from different kinds of hardware, or of another kind than ``--hardware``
    (which picks the page's section): a CPU and a GPU run must not share a table. Rows without
    a ``hardware`` value (written before it was recorded) count as CPU runs.
    """
    kinds = results["hardware"].fillna("cpu") if "hardware" in results else pd.Series("cpu", index=results.index)
    if set(kinds) != {args.hardware}:
        sys.exit(
            f"--report: the runs were measured on {', '.join(sorted(set(kinds)))} but --hardware is {args.hardware}; "
            "join runs of one kind and pass their --hardware."
        )
    devices = results["device"].dropna().unique() if "device" in results else []
    if len(devices) > 1:
        sys.exit(f"--report: the runs were measured on different devices ({'; '.join(devices)}); join alike.")
    return devices[0] if len(devices) else None


def run_points(args: argparse.Namespace, nc, pc) -> pd.DataFrame:
    """Score the additive baseline and run every requested point, one at a time; a row per point and seed.

    ``nc`` and ``pc`` are the sibling scripts ``norman_combinations`` and ``peer_cellflow`` (data,
    split, threads, the peer's environment). Each row records ``hardware`` ("cpu" or "gpu") and
    ``device`` (in words).
    """
    pc.limit_threads(args.threads)
    from cellflow.evaluation import AdditiveBaseline

    if args.hardware == "gpu":
        import torch

        torch.zeros(1, device="cuda")  # CUDA's start-up, paid once by any session, is not one point's time
    device = hardware_words(args)
    adata, frame, train, held_out = pc.build_split(nc, args.data, 0)
    counts = frame["condition"].value_counts().to_dict()
    scorer = Scorer(adata, frame, train, held_out)
    additive = AdditiveBaseline().fit(train)
    rows = []

    def keep(row: dict) -> None:
        rows.append(row | {"hardware": args.hardware, "device": device})
        if args.out is not None:  # after every point, so an interrupted run keeps what it finished
            args.out.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(args.out / "results.csv", index=False)

    for seed in args.seeds:
        predictions = {label: additive.predict(label, n_cells=counts[label], seed=seed) for label in held_out}
        keep({"family": "additive", "point": "additive", "seed": seed, "seconds": 0.0, **scorer.score(predictions)})
    python = None if args.skip_peer else pc.ensure_peer_venv(args.peer_venv or pc.DEFAULT_VENV)
    with tempfile.TemporaryDirectory(prefix="ttq-") as tmp:
        inputs = None if args.skip_peer else pc.write_peer_inputs(train, frame, held_out, Path(tmp))
        for seed in args.seeds:
            for name in args.ours:
                predictions, seconds = run_ours(name, train, held_out, counts, seed, args.hardware)
                keep(
                    {"family": "cellflow", "point": name, "seed": seed, "seconds": seconds, **scorer.score(predictions)}
                )
            for name in [] if args.skip_peer else args.peer:
                predictions, seconds = run_peer(name, python, inputs, held_out, seed, args)
                keep({"family": "peer", "point": name, "seed": seed, "seconds": seconds, **scorer.score(predictions)})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
