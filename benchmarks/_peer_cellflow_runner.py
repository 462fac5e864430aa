"""Train theislab's CellFlow (``cellflow-tools``, JAX) on a Norman split and generate the held-out doubles.

Runs inside the peer's own virtual environment (its package also imports as ``cellflow``), started
by ``peer_cellflow.py``; it never imports this project. The pipeline is the one of the CellFlow
authors' Norman 2019 run (theislab/cellflow_reproducibility, ``fig_4/norman/runs_cellflow/
train_norman_pca_50.py`` with ``conf/model/norman.yaml`` and ``conf/training/norman.yaml``) and of
their tutorials (``docs/notebooks/100_pbmc.ipynb``): ``sc.pp.normalize_total(target_sum=1e4)`` and
``sc.pp.log1p``; ``cellflow.preprocessing.centered_pca`` with 50 components; ``CellFlow(adata,
solver="otfm")``; ``prepare_data(sample_rep="X_pca", perturbation_covariates={"target_gene":
("gene_1", "gene_2")})``; ``prepare_model`` with the Norman configuration; ``train``; ``predict``
from control cells; ``cellflow.preprocessing.reconstruct_pca`` back to log-normalised genes.

One deviation: the authors represent each gene by precomputed embeddings (``"mix"``: ESM2 protein
embeddings and omics factors, read from files on their cluster and built with network look-ups),
which cannot be had offline. Each gene is one-hot encoded instead (``cellflow.preprocessing.
encode_onehot``) and the model learns its embedding (``layers_before_pool``); the second slot of a
single perturbation (``"control"``) gets the zero vector, which CellFlow masks as padding.

Run: ``PEER_PYTHON _peer_cellflow_runner.py --train train.h5ad --held-out held_out.json --out DIR
[--iterations 200000] [--seed 0]``. Writes ``DIR/predictions.h5ad`` (log-normalised, genes as in
the training file), ``DIR/timings.json`` and ``DIR/lognorm_check.npy``.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import metadata
from pathlib import Path

CONTROL_TOKEN = "control"
N_COMPS = 50
BATCH_SIZE = 1024  # conf/training/norman.yaml
N_CHECK_CELLS = 50


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="training cells, raw counts (.h5ad)")
    parser.add_argument(
        "--held-out", type=Path, required=True, help="JSON list of {condition, gene_1, gene_2, n_cells}"
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for predictions and timings")
    parser.add_argument("--iterations", type=int, default=200_000, help="training iterations (authors' Norman: 200000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="cells per iteration (authors': 1024)")
    parser.add_argument(
        "--width",
        type=int,
        default=None,
        help="width of every layer of the velocity field (time encoder, hidden and decoder layers; default: the "
        "authors' 1024/2048 configuration)",
    )
    parser.add_argument(
        "--accumulate", type=int, default=20, help="iterations per parameter update (authors': optax.MultiSteps 20)"
    )
    parser.add_argument("--lr", type=float, default=5e-5, help="Adam's learning rate (authors': 5e-5)")
    parser.add_argument(
        "--epsilon", type=float, default=0.1, help="entropic OT coupling's epsilon (authors': 0.1); 0: no coupling"
    )
    parser.add_argument(
        "--ode-steps",
        type=int,
        default=0,
        help="generate with this many fixed Euler steps (0: the peer's default adaptive Tsit5, tolerances 1e-5)",
    )
    args = parser.parse_args(argv)
    if args.ode_steps < 0:
        parser.error("--ode-steps must be 0 (adaptive) or more.")
    if min(args.iterations, args.batch_size, args.accumulate) < 1 or (args.width is not None and args.width < 1):
        parser.error("--iterations, --batch-size, --accumulate and --width must be at least 1.")
    return args


def versions() -> dict[str, str]:
    """Installed versions of the peer and of the libraries it runs on."""
    names = ["cellflow-tools", "jax", "jaxlib", "flax", "optax", "ott-jax", "diffrax", "scanpy", "anndata", "numpy"]
    return {name: metadata.version(name) for name in names}


def norman_model_kwargs(seed: int, args: argparse.Namespace | None = None) -> dict:
    """``prepare_model`` arguments of the authors' Norman run (conf/model/norman.yaml), or of a cheaper variant.

    ``args`` (the command line) may narrow every layer of the velocity field to ``--width``,
    change the learning rate, the accumulation of iterations per update and the OT coupling's
    epsilon (0: independent pairs): the settings a user would try to make the peer faster.
    """
    import functools

    import optax
    from cellflow.utils import match_linear

    kwargs = {
        "condition_mode": "deterministic",
        "regularization": 0.1,
        "pooling": "mean",
        "layers_before_pool": {"target_gene": {"layer_type": "mlp", "dims": [1024, 1024], "dropout_rate": 0.0}},
        "layers_after_pool": {"layer_type": "mlp", "dims": [1024, 1024], "dropout_rate": 0.0},
        "condition_embedding_dim": 256,
        "cond_output_dropout": 0.5,
        "time_freqs": 1024,
        "time_max_period": None,  # 0 in the yaml, which their script turns into None
        "time_encoder_dims": [1024, 1024, 1024],
        "time_encoder_dropout": 0.0,
        "hidden_dims": [2048, 2048, 2048],
        "hidden_dropout": 0.0,
        "conditioning": "concatenation",
        "decoder_dims": [2048, 2048, 2048],
        "decoder_dropout": 0.0,
        "probability_path": {"constant_noise": 1.0},
        "solver_kwargs": {"ema": 1.0},
        "match_fn": functools.partial(match_linear, epsilon=0.1, scale_cost="mean", tau_a=1.0, tau_b=1.0),
        "optimizer": optax.MultiSteps(optax.adam(5e-5), 20),  # one parameter update every 20 iterations
        "layer_norm_before_concatenation": False,
        "linear_projection_before_concatenation": False,
        "seed": seed,
    }
    if args is None:
        return kwargs
    if args.width is not None:
        w = args.width
        kwargs |= {"time_encoder_dims": [w] * 3, "hidden_dims": [w] * 3, "decoder_dims": [w] * 3}
    optimizer = optax.adam(args.lr)
    kwargs["optimizer"] = optax.MultiSteps(optimizer, args.accumulate) if args.accumulate > 1 else optimizer
    if args.epsilon > 0:
        kwargs["match_fn"] = functools.partial(
            match_linear, epsilon=args.epsilon, scale_cost="mean", tau_a=1.0, tau_b=1.0
        )
    else:  # the solver jits its match_fn, so no coupling is the identity plan: each source keeps its drawn target
        kwargs["match_fn"] = _independent_pairs
    return kwargs


def _independent_pairs(source, target):
    """A transport plan that pairs the i-th source with the i-th target (both drawn at random): no OT."""
    import jax.numpy as jnp

    return jnp.eye(source.shape[0], target.shape[0]) / source.shape[0]


def preprocess(adata):
    """Log-normalise, 50 centred principal components and one-hot gene representations, in place."""
    import numpy as np
    import scanpy as sc

    from cellflow import preprocessing as cfpp

    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    cfpp.centered_pca(adata, n_comps=N_COMPS, keep_centered_data=False)
    cfpp.encode_onehot(
        adata, covariate_keys=["gene_1", "gene_2"], uns_key_added="gene_onehot", exclude_values=[CONTROL_TOKEN]
    )
    width = len(next(iter(adata.uns["gene_onehot"].values())))
    adata.uns["gene_onehot"][CONTROL_TOKEN] = np.zeros(width)  # an all-null token is masked as padding


def solver_options(ode_steps: int) -> dict:
    """``diffrax.diffeqsolve`` options of generation: the peer's default (adaptive) for 0, else fixed Euler steps."""
    if ode_steps == 0:
        return {}
    import diffrax

    return {"solver": diffrax.Euler(), "stepsize_controller": diffrax.ConstantStepSize(), "dt0": 1.0 / ode_steps}


def generate(model, adata, held_out: list[dict], seed: int, ode_steps: int = 0):
    """Push control cells through the flow for each held-out double; decode to log-normalised genes."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from cellflow import preprocessing as cfpp

    rng = np.random.default_rng(seed)
    controls = adata[adata.obs["control"].to_numpy()]
    blocks, labels, seconds = [], [], {}
    for item in held_out:
        start = time.perf_counter()
        n_cells, n_controls = int(item["n_cells"]), controls.n_obs
        # One source cell per predicted cell: all distinct when there are enough controls.
        source = controls[rng.choice(n_controls, size=n_cells, replace=n_cells > n_controls)].copy()
        source.obs_names_make_unique()
        covariates = pd.DataFrame(
            {"gene_1": [item["gene_1"]], "gene_2": [item["gene_2"]], "condition": [item["condition"]], "control": False}
        )
        out = model.predict(
            adata=source,
            covariate_data=covariates,
            sample_rep="X_pca",
            condition_id_key="condition",
            **solver_options(ode_steps),
        )
        decoded = ad.AnnData(
            X=np.zeros((n_cells, adata.n_vars), dtype=np.float32), var=pd.DataFrame(index=adata.var_names)
        )
        decoded.obsm["X_pca_pred"] = np.asarray(out[item["condition"]])
        cfpp.reconstruct_pca(query_adata=decoded, use_rep="X_pca_pred", ref_adata=adata, layers_key_added="X_recon")
        blocks.append(np.asarray(decoded.layers["X_recon"], dtype=np.float32))
        labels += [item["condition"]] * n_cells
        seconds[item["condition"]] = time.perf_counter() - start
    return np.concatenate(blocks), labels, seconds


def main(argv: list[str] | None = None) -> None:
    """Preprocess, train, generate; write predictions and timings."""
    args = parse_args(argv)
    import anndata as ad
    import numpy as np
    import pandas as pd
    from cellflow.model import CellFlow

    import cellflow

    info = {"versions": versions()}
    print(f"peer package: {Path(cellflow.__file__).parent}", flush=True)
    held_out = json.loads(args.held_out.read_text())
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    adata = ad.read_h5ad(args.train)
    adata.obs["control"] = adata.obs["control"].astype(bool)
    preprocess(adata)
    check = adata.X[:N_CHECK_CELLS]
    np.save(args.out / "lognorm_check.npy", np.asarray(check.toarray() if hasattr(check, "toarray") else check))
    model = CellFlow(adata, solver="otfm")
    model.prepare_data(
        sample_rep="X_pca",
        control_key="control",
        perturbation_covariates={"target_gene": ("gene_1", "gene_2")},
        perturbation_covariate_reps={"target_gene": "gene_onehot"},
    )
    model.prepare_model(**norman_model_kwargs(args.seed, args))
    info["preprocess_seconds"] = time.perf_counter() - start
    print(f"peer: preprocessing and model set-up {info['preprocess_seconds']:.1f} s", flush=True)

    train_start = time.perf_counter()
    # No validation data: valid_freq past the last iteration, as in the authors' Norman run (400000).
    model.train(num_iterations=args.iterations, batch_size=args.batch_size, valid_freq=args.iterations + 1)
    info["train_seconds"] = time.perf_counter() - train_start
    losses = model.trainer.training_logs["loss"]
    info["final_loss"] = float(np.mean(losses[-min(len(losses), 100) :]))
    info["iterations"] = args.iterations
    print(
        f"peer: {args.iterations} iterations in {info['train_seconds']:.1f} s "
        f"({info['train_seconds'] / args.iterations:.3f} s/iteration), final loss {info['final_loss']:.4f}",
        flush=True,
    )

    pred, labels, seconds = generate(model, adata, held_out, args.seed, args.ode_steps)
    info["generate_seconds_per_condition"] = seconds
    info["generate_seconds"] = sum(seconds.values())
    info["end_to_end_seconds"] = time.perf_counter() - start
    print(f"peer: generation {info['generate_seconds']:.1f} s for {len(held_out)} conditions", flush=True)

    result = ad.AnnData(X=pred, obs=pd.DataFrame({"condition": labels}, index=[str(i) for i in range(len(labels))]))
    result.var_names = adata.var_names.copy()
    result.write_h5ad(args.out / "predictions.h5ad")
    (args.out / "timings.json").write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
