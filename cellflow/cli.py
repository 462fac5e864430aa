"""Command line: ``cellflow demo | train | generate | benchmark``.

The verbs mirror the Python API; run ``cellflow VERB --help`` for the options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._constants import COUPLINGS, LIKELIHOODS, PRECISIONS, SOLVER_METHODS


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cellflow`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        args.run(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
        print(f"cellflow {args.verb}: error: {error}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellflow", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb")

    demo = verbs.add_parser("demo", help="simulate a screen, hold out conditions, train, predict and score")
    demo.add_argument("--n-cells", type=int, default=6000)
    demo.add_argument("--n-genes", type=int, default=200)
    demo.add_argument("--flow-steps", type=int, default=None, help="default: the library's")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default=None, help="directory for results.csv and the trained model")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    demo.set_defaults(run=_demo)

    train = verbs.add_parser("train", help="train a model on an .h5ad file and save it")
    _add_setup_options(train)
    train.add_argument("--out", required=True, help="directory to save the model to")
    # Options left out take the library's defaults (cf.CellFlow and cellflow.train's configs).
    train.add_argument("--backbone", default=None, help="velocity network (default: mlp)")
    train.add_argument("--latent-dim", type=int, default=None)
    train.add_argument("--likelihood", default=None, choices=LIKELIHOODS, help="default: nb")
    train.add_argument("--token-embedding", default=None, choices=["learned", "expression"])
    train.add_argument("--flow-steps", type=int, default=None)
    train.add_argument("--vae-epochs", type=int, default=None)
    train.add_argument("--reflow-rounds", type=int, default=None, help="reflow rounds after the flow (0: none)")
    train.add_argument("--coupling", default=None, choices=COUPLINGS, help="how sources are paired with targets")
    train.add_argument(
        "--validation-fraction",
        type=float,
        default=None,
        help="share of perturbed conditions held out for early stopping of the flow (default 0: none)",
    )
    train.add_argument("--precision", default=None, choices=PRECISIONS, help="arithmetic of the flow's training")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(run=_train)

    generate = verbs.add_parser("generate", help="generate cells of conditions with a saved model")
    generate.add_argument("--model", required=True, help="directory of a saved model")
    generate.add_argument("--conditions", nargs="+", required=True, help='labels such as A "A+B"')
    generate.add_argument("--n-cells", type=int, default=500)
    generate.add_argument("--covariates", nargs="*", default=[], help="KEY=VALUE pairs, e.g. cell_type=K562")
    generate.add_argument(
        "--method",
        default=None,
        choices=SOLVER_METHODS,
        help="ODE solver (default: euler for a reflowed model, else heun)",
    )
    generate.add_argument("--steps", type=int, default=None, help="solver steps (default: 4 after reflow, else 8)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--out", required=True, help="output .h5ad file")
    generate.set_defaults(run=_generate)
    _add_benchmark(verbs)
    return parser


def _add_setup_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="input .h5ad file (raw counts in X or --layer)")
    parser.add_argument("--perturbation-key", default="perturbation")
    parser.add_argument("--control", default="control")
    parser.add_argument("--covariate-keys", nargs="*", default=[])
    parser.add_argument("--dose-key", default=None)
    parser.add_argument("--layer", default=None)


def _demo(args: argparse.Namespace) -> None:
    # The verbs import the library when they run, so that `cellflow --help` does not load torch.
    from .evaluation import run_demo

    run_demo(
        n_cells=args.n_cells,
        n_genes=args.n_genes,
        flow_steps=args.flow_steps,
        seed=args.seed,
        out=args.out,
        progress=not args.quiet,
    )


def _train(args: argparse.Namespace) -> None:
    import anndata as ad

    import cellflow as cf

    adata = ad.read_h5ad(args.data)
    cf.pp.setup(
        adata,
        perturbation_key=args.perturbation_key,
        control=args.control,
        covariate_keys=args.covariate_keys,
        dose_key=args.dose_key,
        layer=args.layer,
        counts=args.likelihood != "normal",
    )
    architecture = {
        "backbone": args.backbone,
        "latent_dim": args.latent_dim,
        "likelihood": args.likelihood,
        "token_embedding": args.token_embedding,
        "seed": args.seed,
    }
    model = cf.CellFlow(adata, **_given(architecture))
    flow = {"coupling": args.coupling, "validation_fraction": args.validation_fraction, "precision": args.precision}
    model.train(
        **_given({"vae_epochs": args.vae_epochs, "flow_steps": args.flow_steps, "reflow_rounds": args.reflow_rounds}),
        flow_kwargs=_given(flow),
        progress_bar=not args.quiet,
    )
    model.save(args.out)
    print(f"saved {model!r} to {args.out}")


def _given(options: dict) -> dict:
    """The options given on the command line (the others keep the library's defaults)."""
    return {k: v for k, v in options.items() if v is not None}


def _generate(args: argparse.Namespace) -> None:
    import cellflow as cf

    covariates = {}
    for pair in args.covariates:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--covariates takes KEY=VALUE pairs, got {pair!r}.")
        covariates[key] = value
    model = cf.CellFlow.load(args.model)
    pred = cf.tl.generate(
        model,
        conditions=args.conditions,
        n_cells=args.n_cells,
        covariates=covariates,
        seed=args.seed,
        method=args.method,
        steps=args.steps,
    )
    pred.write_h5ad(args.out)
    print(f"wrote {pred.n_obs} cells x {pred.n_vars} genes to {args.out}")


def _add_benchmark(verbs) -> None:
    bench = verbs.add_parser(
        "benchmark", help="hold out conditions of a real screen, train, predict, score against baselines, report"
    )
    bench.add_argument("--data", required=True, help="input .h5ad file (raw counts in X)")
    bench.add_argument("--split", required=True, choices=["combinations", "singles", "covariate_transfer"])
    bench.add_argument("--out", required=True, help="directory for results.csv, report.md and plots")
    bench.add_argument("--perturbation-key", default="perturbation")
    bench.add_argument("--control", default="control")
    bench.add_argument("--covariate-keys", nargs="*", default=[])
    bench.add_argument("--subset-key", default=None, help="keep cells with obs[KEY] == --subset-value")
    bench.add_argument("--subset-value", default=None)
    bench.add_argument("--n-held-out", type=int, default=None)
    bench.add_argument("--flow-steps", type=int, default=None, help="default: the library's")
    bench.add_argument("--vae-epochs", type=int, default=None)
    bench.add_argument("--latent-dim", type=int, default=None)
    bench.add_argument("--token-embedding", default=None, choices=["learned", "expression"])
    bench.add_argument("--accelerator", default="auto")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(run=_benchmark)


def _benchmark(args: argparse.Namespace) -> None:
    from .evaluation import run_benchmark

    if (args.subset_key is None) != (args.subset_value is None):
        raise ValueError("--subset-key and --subset-value go together (e.g. --subset-key dataset --subset-value x).")
    run_benchmark(
        args.data,
        split=args.split,
        out=args.out,
        perturbation_key=args.perturbation_key,
        control=args.control,
        covariate_keys=args.covariate_keys,
        subset=None if args.subset_key is None else (args.subset_key, args.subset_value),
        n_held_out=args.n_held_out,
        flow_steps=args.flow_steps,
        vae_epochs=args.vae_epochs,
        latent_dim=args.latent_dim,
        token_embedding=args.token_embedding,
        seed=args.seed,
        accelerator=args.accelerator,
        progress=not args.quiet,
    )


if __name__ == "__main__":
    sys.exit(main())
