"""Compare theislab's CellFlow (``cellflow-tools``, JAX) with ours on held-out Norman 2019 doubles.

What it measures. The split of ``norman_combinations.py``: the five doubles ``A+B`` of the Norman
subset whose singles are both measured are held out, every other cell trains. The peer runs in its
own virtual environment (its package also imports as ``cellflow``) through
``_peer_cellflow_runner.py``, with the pipeline of its authors' Norman run: log-normalise, 50
centred principal components, one-hot gene tokens (their ESM2/omics gene embeddings need network
downloads), their Norman model configuration and iteration count, control cells pushed through the
flow, decoded back to genes. It generates as many cells as each real held-out double has. Back
here, its predictions (already log-normalised: ``log1p`` of counts scaled to 1e4 per cell, the same
as ``cellflow.metrics.log_normalize``, which is checked) are scored with the metrics of
``norman_combinations.py`` (energy distance on 50 principal components of the real cells, Pearson
delta on the top-20 and on all genes), next to the additive and control baselines and the noise
floor; and, unless ``--skip-ours``, our cellflow is trained with its defaults and scored on the
same split.

Times. Training (the peer's ``train``; our VAE, flow and reflow), generation (all held-out doubles,
decoding included, JIT compilation included) and end to end, from the raw training counts to the
predictions: for the peer, preprocessing, model set-up, training and generation (imports and file
writing excluded); for ours, training (VAE, flow, reflow) and generation, as timed by the model. The
last column is each method's end-to-end time over ours. Installing the peer is not timed as part of
any method; its duration is printed.

Matched budget. Both methods run one after the other (never at the same time) on the same machine,
with the same number of CPU threads (``--threads``: OMP/MKL/OpenBLAS thread counts, torch's
threads, and the process's CPU affinity, which JAX's XLA thread pool follows), on the same training
cells and the same held-out doubles, with the same number of generated cells, one seed each. Each
method trains for the length its authors use: the peer 200,000 iterations of batch 1024 (their
Norman run, ``conf/training/norman.yaml``; with ``optax.MultiSteps(..., 20)`` that is 10,000
parameter updates), ours the defaults of ``norman_combinations.py``. The ratio of end-to-end times
is the cost of that choice. For a matched wall clock instead, run once, read the peer's seconds per
iteration, and pass ``--peer-iterations`` so its training takes as long as ours.

Run: ``.venv/bin/python -u benchmarks/peer_cellflow.py [--peer-iterations 200000] [--threads N]
[--seed 0] [--skip-ours] [--peer-venv ~/.cache/cellflow-bench/peer-venv] [--out DIR]``
(a quick check: ``--peer-iterations 200 --skip-ours --threads 1``). ``--results-page`` writes the
comparison table into the section ``peer_cellflow`` of ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "_peer_cellflow_runner.py"
DEFAULT_VENV = Path("~/.cache/cellflow-bench/peer-venv").expanduser()
# cellflow-tools 0.0.9 imports requests at `import cellflow` but declares it only in its "embedding" extra.
PEER_PACKAGES = ["cellflow-tools", "requests"]
PEER_METHOD = "cellflow_tools"
METHODS = [
    "cellflow",
    PEER_METHOD,
    "cellflow_no_reflow",
    "latent_arithmetic",
    "vae_ceiling",
    "additive",
    "control",
    "noise_floor",
]
METRICS = ["energy_distance", "pearson_delta_top20", "pearson_delta"]
THREAD_VARIABLES = ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"]


def load_norman_module():
    """``benchmarks/norman_combinations.py`` as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("norman_combinations", HERE / "norman_combinations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv: list[str] | None = None, default_data: Path | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data, help="the Norman/McFaline-Figueroa subset (.h5ad)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the split (all 5 qualify)")
    parser.add_argument("--seed", type=int, default=0, help="training and sampling seed of both methods")
    parser.add_argument("--peer-venv", type=Path, default=DEFAULT_VENV, help="virtual environment of cellflow-tools")
    parser.add_argument(
        "--peer-iterations", type=int, default=200_000, help="peer training iterations (authors' Norman run: 200000)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both methods (default: all)")
    parser.add_argument("--skip-ours", action="store_true", help="score the peer and the baselines only")
    parser.add_argument("--out", type=Path, default=None, help="directory for results.csv, summary.csv, predictions")
    parser.add_argument(
        "--results-page", action="store_true", help="write the comparison into docs/results.md (off by default)"
    )
    args = parser.parse_args(argv)
    if args.peer_iterations < 1:
        parser.error(f"--peer-iterations {args.peer_iterations}: give at least 1.")
    if args.threads is not None and not 1 <= args.threads <= len(os.sched_getaffinity(0)):
        parser.error(f"--threads {args.threads}: give 1 to {len(os.sched_getaffinity(0))} (the CPUs this process has).")
    return args


def limit_threads(n_threads: int | None) -> None:
    """Give this process, and the peer it starts, the same ``n_threads`` CPUs (no-op for ``None``)."""
    if n_threads is None:
        return
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n_threads)
    # XLA's CPU thread pool is sized from the CPUs the process may run on; the child inherits it.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n_threads])
    import torch

    torch.set_num_threads(n_threads)


def ensure_peer_venv(venv: Path) -> Path:
    """The peer's Python, creating its virtual environment and installing cellflow-tools if needed."""
    python = venv / "bin" / "python"
    # -I: isolated mode, so this project's own `cellflow` (in the working directory) never shadows the peer's.
    probe = [str(python), "-I", "-c", "import cellflow.model"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        print(f"peer environment: {venv} (already installed)")
    else:
        start = time.perf_counter()
        print(f"installing {', '.join(PEER_PACKAGES)} into {venv} ...", flush=True)
        steps = [[sys.executable, "-m", "venv", str(venv)], [str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES]]
        for step in steps if not python.exists() else steps[1:]:
            done = subprocess.run(step)  # output goes to the terminal, so an error is seen as pip writes it
            if done.returncode != 0:
                sys.exit(f"`{' '.join(step)}` failed ({done.returncode}); its output is above.")
        check = subprocess.run(probe, capture_output=True, text=True)
        if check.returncode != 0:
            sys.exit(f"cellflow-tools installed but does not import:\n{check.stderr[-3000:]}")
        print(f"install took {time.perf_counter() - start:.0f} s (not part of any timing)")
    names = ["cellflow-tools", "jax", "jaxlib", "flax", "ott-jax"]
    code = "import importlib.metadata as m, sys; print(', '.join(f'{n} {m.version(n)}' for n in sys.argv[1:]))"
    found = subprocess.run([str(python), "-I", "-c", code, *names], capture_output=True, text=True).stdout.strip()
    print(f"peer versions: {found}")
    return python


def build_split(nc, data: Path, split_seed: int):
    """All Norman cells, their condition frame, the training cells and the held-out doubles (as norman_combinations)."""
    import cellflow as cf
    from cellflow.evaluation import conditions_frame, split_combinations

    adata = nc.load_norman(data)
    cf.pp.setup(adata, perturbation_key="perturbation", control="control")
    frame = conditions_frame(adata)
    split = split_combinations(frame, n_combinations=nc.N_DOUBLES, n_singles=0, seed=split_seed)
    held_out = sorted(split.held_out)
    train = adata[split.train_mask].copy()
    cf.pp.setup(train, perturbation_key="perturbation", control="control")
    return adata, frame, train, held_out


def write_peer_inputs(train, frame, held_out: list[str], folder: Path) -> tuple[Path, Path]:
    """Training counts with ``gene_1``/``gene_2``/``control`` columns, and the held-out doubles with their sizes."""
    import anndata as ad

    labels = frame.loc[train.obs_names, "condition"].to_numpy()
    tokens = [label.split("+") if label != "control" else [] for label in labels]
    obs = pd.DataFrame(
        {
            "condition": labels,
            "gene_1": [t[0] if len(t) > 0 else "control" for t in tokens],
            "gene_2": [t[1] if len(t) > 1 else "control" for t in tokens],
            "control": labels == "control",
        },
        index=pd.Index(np.asarray(train.obs_names, dtype=str), dtype=object),
    )
    # Plain object strings: pandas 3 infers its own string dtype, which anndata writes only on
    # request and anndata before 0.11 (the peer's environment may have one) cannot read.
    obs = obs.astype({"condition": object, "gene_1": object, "gene_2": object})
    if max(len(t) for t in tokens) > 2:
        raise ValueError("The peer runner encodes at most two genes per cell; found a larger combination.")
    train_path, held_out_path = folder / "train.h5ad", folder / "held_out.json"
    var = pd.DataFrame(index=pd.Index(np.asarray(train.var_names, dtype=str), dtype=object))
    ad.AnnData(X=train.X.copy(), obs=obs, var=var).write_h5ad(train_path)
    counts = frame["condition"].value_counts()
    items = [
        {"condition": c, "gene_1": c.split("+")[0], "gene_2": c.split("+")[1], "n_cells": int(counts[c])}
        for c in held_out
    ]
    held_out_path.write_text(json.dumps(items, indent=2))
    return train_path, held_out_path


def run_peer(python: Path, train_path: Path, held_out_path: Path, out: Path, args) -> dict:
    """Run the runner in the peer's environment; its timings, with the wall time of the whole subprocess."""
    command = [str(python), "-I", "-u", str(RUNNER), "--train", str(train_path), "--held-out", str(held_out_path)]
    command += ["--out", str(out), "--iterations", str(args.peer_iterations), "--seed", str(args.seed)]
    env = os.environ | {"JAX_PLATFORMS": "cpu", "TQDM_MININTERVAL": "30"}
    start = time.perf_counter()
    done = subprocess.run(command, env=env)
    if done.returncode != 0:
        sys.exit(f"the peer runner failed ({done.returncode}); its output is above.")
    timings = json.loads((out / "timings.json").read_text())
    timings["process_seconds"] = time.perf_counter() - start
    return timings


def check_normalisation(train, out: Path) -> float:
    """Largest difference between the peer's log-normalised training cells and ours; exits if they disagree."""
    from cellflow.metrics import log_normalize

    theirs = np.load(out / "lognorm_check.npy")
    ours = log_normalize(train.X[: theirs.shape[0]])
    gap = float(np.abs(theirs - ours).max())
    if gap > 1e-4:
        sys.exit(f"The peer's log-normalisation differs from cellflow.metrics.log_normalize by up to {gap:.3g}.")
    return gap


def score_peer(adata, frame, held_out: list[str], predictions, timings: dict) -> pd.DataFrame:
    """Score the peer's log-normalised predictions as ``score_held_out`` scores ours."""
    from cellflow.evaluation._scoring import ConditionScorer
    from cellflow.metrics import log_normalize

    if list(predictions.var_names) != list(adata.var_names):
        sys.exit("The peer's predictions have other genes (or another gene order) than the data.")
    real = log_normalize(adata.X)
    scorer = ConditionScorer(real)
    condition = frame["condition"].to_numpy()
    control_cells = real[condition == "control"]
    rows = []
    for label in held_out:
        truth = real[condition == label]
        pred = np.asarray(predictions.X[predictions.obs["condition"].to_numpy() == label])
        rows.append(
            {
                "method": PEER_METHOD,
                "condition": label,
                "n_cells": len(truth),
                **scorer.score(pred, truth, control_cells),
                "generate_seconds": timings["generate_seconds_per_condition"][label],
            }
        )
    return pd.DataFrame(rows)


def run_ours(nc, adata, frame, train, held_out, baselines, seed: int, data: Path) -> tuple[pd.DataFrame, dict]:
    """Train and score our cellflow with the defaults of norman_combinations.py; rows and times."""
    ours_args = nc.parse_args(["--data", str(data), "--draws", "1"])  # one draw, as the peer's
    results = nc.train_and_score(adata, frame, train, held_out, baselines, ours_args, seed)
    # The peer predicts as many cells as each real double has: compare like with like.
    results = results[results["predicted_cells"] == "matched"]
    model_rows = results[results["method"] == "cellflow"]
    row = model_rows.iloc[0]
    generate = float(model_rows["generate_seconds"].sum())
    train_seconds = float(row["vae_seconds"] + row["flow_seconds"] + row["reflow_seconds"])
    # End to end: training (VAE, encoding, flow, reflow) and generation; building the model
    # object (well under a second) and the scoring of extra rows (before reflow, baselines) are not counted.
    times = {
        "train_seconds": train_seconds,
        "generate_seconds": generate,
        "end_to_end_seconds": train_seconds + generate,
    }
    print(
        f"ours ({ours_args.preset} preset): VAE {row['vae_seconds']:.1f} s, flow {row['flow_seconds']:.1f} s, "
        f"reflow {row['reflow_seconds']:.1f} s, generation {generate:.1f} s",
        flush=True,
    )
    return results, times


def summary_table(results: pd.DataFrame, times: dict[str, dict]) -> pd.DataFrame:
    """Mean metrics over the held-out doubles per method, with times and the end-to-end ratio to ours."""
    table = results.groupby("method")[METRICS].mean()
    table = table.reindex([m for m in METHODS if m in table.index])
    for column in ["train_seconds", "generate_seconds", "end_to_end_seconds"]:
        table[column] = [times.get(m, {}).get(column, np.nan) for m in table.index]
    reference = times.get("cellflow", {}).get("end_to_end_seconds", np.nan)
    table["end_to_end_vs_ours"] = table["end_to_end_seconds"] / reference
    return table


def write_results_page(table: pd.DataFrame, timings: dict, held_out: list[str], args) -> None:
    """The comparison table (and the peer's timings) into the section ``peer_cellflow`` of docs/results.md."""
    from _results import markdown_table, provenance, write_results_section

    intro = provenance(
        f"Average over the {len(held_out)} held-out doubles ({', '.join(held_out)}), as many predicted cells as "
        f"real ones; seed {args.seed}; peer: cellflow-tools, {args.peer_iterations} iterations. Energy distance: "
        "lower is better; Pearson delta: higher is better; times in seconds."
    )
    formats = {m: "{:.4f}" for m in METRICS} | {
        "train_seconds": "{:,.0f}",
        "generate_seconds": "{:,.0f}",
        "end_to_end_seconds": "{:,.0f}",
        "end_to_end_vs_ours": "{:.2f}x",
    }
    peer = (
        f"Peer: preprocessing + set-up {timings['preprocess_seconds']:.0f} s (in its end-to-end time), "
        f"{timings['train_seconds'] / timings['iterations']:.3f} s/iteration."
    )
    write_results_section("peer_cellflow", f"{intro}\n\n{markdown_table(table, formats, index=True)}\n\n{peer}")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Install (if needed), run both methods on the same split, and print one comparison table."""
    nc = load_norman_module()
    args = parse_args(argv, default_data=nc.DEFAULT_DATA)
    limit_threads(args.threads)
    start = time.perf_counter()
    python = ensure_peer_venv(args.peer_venv)

    from cellflow.evaluation import AdditiveBaseline, ControlBaseline, score_held_out

    adata, frame, train, held_out = build_split(nc, args.data, args.split_seed)
    print(f"Norman 2019 (K562 CRISPRa): {adata.n_obs} cells x {adata.n_vars} genes; train {train.n_obs} cells")
    print(f"held out ({len(held_out)} doubles, both singles in training): {', '.join(held_out)}")
    print(f"threads: {args.threads or 'all'} (CPUs {sorted(os.sched_getaffinity(0))}); seed {args.seed}", flush=True)
    baselines = [AdditiveBaseline().fit(train), ControlBaseline().fit(train)]

    with tempfile.TemporaryDirectory(prefix="peer-cellflow-") as tmp:
        folder = args.out if args.out is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        train_path, held_out_path = write_peer_inputs(train, frame, held_out, Path(tmp))
        print(f"\npeer: cellflow-tools, {args.peer_iterations} iterations", flush=True)
        timings = run_peer(python, train_path, held_out_path, folder / "peer", args)
        import anndata as ad

        predictions = ad.read_h5ad(folder / "peer" / "predictions.h5ad")
        gap = check_normalisation(train, folder / "peer")
    print(f"peer log-normalisation matches cellflow.metrics.log_normalize (max difference {gap:.2g})")
    peer_rows = score_peer(adata, frame, held_out, predictions, timings)
    times = {PEER_METHOD: timings}

    if args.skip_ours:
        others = score_held_out(adata, frame, held_out, baselines=baselines, seed=args.seed)
    else:
        print("\nours: cellflow with the defaults of norman_combinations.py", flush=True)
        others, times["cellflow"] = run_ours(nc, adata, frame, train, held_out, baselines, args.seed, args.data)
    results = pd.concat([others, peer_rows], ignore_index=True)
    table = summary_table(results, times)

    print(
        f"\npeer: preprocessing + set-up {timings['preprocess_seconds']:.1f} s (in its end-to-end time), "
        f"{timings['train_seconds'] / timings['iterations']:.3f} s/iteration, final loss {timings['final_loss']:.4f}, "
        f"whole subprocess with imports {timings['process_seconds']:.1f} s"
    )
    note = "energy distance: lower is better; Pearson delta: higher is better; times in seconds"
    print(f"\naverage over the {len(held_out)} held-out doubles ({note}):")
    with pd.option_context("display.width", 200, "display.precision", 4):
        print(table.to_string(na_rep="-"))
    if args.out is not None:
        results.to_csv(args.out / "results.csv", index=False)
        table.to_csv(args.out / "summary.csv")
        print(f"\nwrote {args.out / 'results.csv'}, {args.out / 'summary.csv'} and {args.out / 'peer'}")
    if args.results_page:
        write_results_page(table, timings, held_out, args)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return table


if __name__ == "__main__":
    main()
