"""Command line: ``cellflow demo | train | generate | benchmark``.

The four verbs mirror the Python API; run ``cellflow VERB --help`` for the options,
``cellflow --version`` for the version and ``cellflow --debug VERB ...`` for a traceback
instead of a one-line error.

Exit codes
----------
0
    Success.
1
    User error: bad input, bad option value, unreadable or unwritable file (one line on
    stderr: ``cellflow VERB: error: ...``); also an internal error (rerun with ``--debug``).
2
    Usage error: unknown option, missing argument, no verb (argparse).
130
    Interrupted (SIGINT, Ctrl+C, ``KeyboardInterrupt``).
143
    Terminated (SIGTERM, also Lightning's ``SIGTERMException``).

``train`` checks ``--out`` before it reads the data and saves only once training has
finished; ``generate`` checks ``--out`` before it loads the model and writes to a temporary
file that replaces ``--out`` only when complete: interrupted, neither leaves a new output.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from .._constants import COUPLINGS, LIKELIHOODS, PRECISIONS, PRESET_NAMES, SOLVER_METHODS, TOKEN_EMBEDDINGS
from ._config import expand_config
from ._errors import (
    EXIT_CODES,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_USER_ERROR,
    CommandError,
    Signalled,
    is_lightning_sigterm,
    one_line,
    signals_raise,
    stopped,
    user_errors,
)
from ._paths import (
    check_file_out,
    check_h5ad,
    check_model_dir,
    check_model_out,
    check_writable_dir,
    read_h5ad,
)

# "table" needs a pandas DataFrame of token features, which a command line cannot pass.
CLI_TOKEN_EMBEDDINGS = tuple(e for e in TOKEN_EMBEDDINGS if e != "table")
SPLITS = ("combinations", "singles", "covariate_transfer")  # cellflow.evaluation._run.SPLITS (imports pandas)
QUIET_HELP = "no progress output (there is none either when stderr is not a terminal, e.g. in a CI log)"
EXPORT_FORMATS = ("cell-eval",)  # formats of `cellflow benchmark --export`


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cellflow`` command; returns the exit code (see the module docstring)."""
    parser = _parser()
    try:
        argv = expand_config(sys.argv[1:] if argv is None else argv, _verb_parsers(parser))
    except CommandError as error:
        print(f"cellflow: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version (0) or a usage error (2, message printed by argparse)
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if getattr(args, "config", None) is not None:  # only an abbreviation such as --conf gets here
        print("cellflow: error: spell out --config FILE (the file was not read).", file=sys.stderr)
        return EXIT_USER_ERROR
    debug = getattr(args, "debug", False)
    try:
        with signals_raise():
            args.run(args)
    except Signalled as signalled:
        return stopped(args.verb, signalled.signum, debug)
    except KeyboardInterrupt:
        return stopped(args.verb, signal.SIGINT, debug)
    except SystemExit as exiting:
        if is_lightning_sigterm(exiting):
            return stopped(args.verb, signal.SIGTERM, debug)
        raise
    except Exception as error:
        if debug:
            raise
        if isinstance(error, user_errors()):
            print(f"cellflow {args.verb}: error: {one_line(error)}", file=sys.stderr)
        else:
            print(
                f"cellflow {args.verb}: error: internal error ({type(error).__name__}: {one_line(error)}); "
                "rerun with --debug for the traceback",
                file=sys.stderr,
            )
        return EXIT_USER_ERROR
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    epilog = "exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="cellflow",
        description=__doc__.splitlines()[0],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cellflow {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (and re-raise it)")
    # --debug is also accepted after the verb; SUPPRESS keeps the subparser from resetting the global one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="this verb's options from a TOML or YAML file (name = value, names as below); "
        "options on the command line win",
    )
    verbs = parser.add_subparsers(dest="verb")

    def verb(name: str, summary: str) -> argparse.ArgumentParser:
        return verbs.add_parser(
            name, help=summary, parents=[common], epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
        )

    demo = verb("demo", "simulate a screen, hold out conditions, train, predict and score")
    demo.add_argument("--n-cells", type=int, default=6000)
    demo.add_argument("--n-genes", type=int, default=200)
    demo.add_argument("--flow-steps", type=int, default=None, help="default: the library's")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default=None, help="directory for results.csv and the trained model")
    demo.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    demo.set_defaults(run=_demo)

    train = verb("train", "train a model on an .h5ad file and save it")
    _add_setup_options(train)
    train.add_argument("--out", required=True, help="directory to save the model to (checked before training)")
    train.add_argument("--overwrite", action="store_true", help="replace a model already saved in --out")
    train.add_argument(
        "--checkpoint-dir", default=None, metavar="DIR", help="directory for training checkpoints (default: none)"
    )
    # Options left out take the library's defaults (cf.CellFlow and cellflow.train's configs).
    train.add_argument(
        "--preset", default=None, choices=PRESET_NAMES, help="size and training lengths (default: default)"
    )
    train.add_argument("--backbone", default=None, help="velocity network (default: mlp)")
    train.add_argument("--latent-dim", type=int, default=None)
    train.add_argument("--likelihood", default=None, choices=LIKELIHOODS, help="default: nb")
    train.add_argument("--token-embedding", default=None, choices=CLI_TOKEN_EMBEDDINGS)
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
    train.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    train.set_defaults(run=_train)

    generate = verb("generate", "generate cells of conditions with a saved model")
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
    generate.add_argument("--out", required=True, help="output .h5ad file (checked before the model is loaded)")
    generate.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    generate.set_defaults(run=_generate)

    bench = verb("benchmark", "hold out conditions of a real screen, train, predict, score against baselines, report")
    _add_benchmark_options(bench)
    bench.set_defaults(run=_benchmark)
    return parser


def _verb_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of every verb, by name."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only for a person at a terminal: none with --quiet or when stderr is a file or a CI log."""
    return not args.quiet and sys.stderr.isatty()


def _add_setup_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="input .h5ad file (raw counts in X or --layer)")
    parser.add_argument("--perturbation-key", default="perturbation")
    parser.add_argument("--control", default="control")
    parser.add_argument("--covariate-keys", nargs="*", default=[])
    parser.add_argument("--dose-key", default=None)
    parser.add_argument("--layer", default=None)


# ---------------------------------------------------------------------- checks of paths (no heavy imports)
def _demo(args: argparse.Namespace) -> None:
    # The verbs import the library when they run, so that `cellflow --help` does not load torch.
    from ..evaluation import run_demo

    run_demo(
        n_cells=args.n_cells,
        n_genes=args.n_genes,
        flow_steps=args.flow_steps,
        seed=args.seed,
        out=args.out,
        progress=not args.quiet,
        progress_bar=_progress(args),
    )


def _train(args: argparse.Namespace) -> None:
    check_model_out(args.out, args.overwrite)  # before reading the data or training
    if args.checkpoint_dir is not None:
        checkpoints = Path(args.checkpoint_dir)
        if checkpoints.exists() and not checkpoints.is_dir():
            raise FileExistsError(f"--checkpoint-dir {args.checkpoint_dir} is a file, not a directory.")
        check_writable_dir(checkpoints, f"--checkpoint-dir {args.checkpoint_dir}")
    adata = read_h5ad(args.data)

    import cellflow as cf

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
        "preset": args.preset,
    }
    model = cf.CellFlow(adata, **_given(architecture))
    flow = {"coupling": args.coupling, "validation_fraction": args.validation_fraction, "precision": args.precision}
    steps = {"vae_epochs": args.vae_epochs, "flow_steps": args.flow_steps, "reflow_rounds": args.reflow_rounds}
    if not args.quiet:  # a line for logs too, where there are no progress bars
        print(f"training on {adata.n_obs} cells x {adata.n_vars} genes: {model!r}", flush=True)
    model.train(
        **_given({**steps, "checkpoint_dir": args.checkpoint_dir}),  # checkpoint_dir only when given
        flow_kwargs=_given(flow),
        progress_bar=_progress(args),
    )
    model.save(args.out, overwrite=args.overwrite)
    print(f"saved {model!r} to {args.out}")


def _given(options: dict) -> dict:
    """The options given on the command line (the others keep the library's defaults)."""
    return {k: v for k, v in options.items() if v is not None}


def _generate(args: argparse.Namespace) -> None:
    covariates = {}
    for pair in args.covariates:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--covariates takes KEY=VALUE pairs, got {pair!r}.")
        covariates[key] = value
    check_file_out(args.out, args.overwrite, Path(args.model))  # before loading the model or generating
    check_model_dir(args.model)

    import cellflow as cf

    try:
        model = cf.CellFlow.load(args.model)
    except user_errors() as error:  # damaged config or weights (json, safetensors)
        raise CommandError(f"cannot load the model in --model {args.model}: {one_line(error)}") from error
    pred = cf.tl.generate(
        model,
        conditions=args.conditions,
        n_cells=args.n_cells,
        covariates=covariates,
        seed=args.seed,
        method=args.method,
        steps=args.steps,
    )
    out = Path(args.out)
    partial = out.with_name(f".{out.name}.partial")  # replaces --out only once written in full
    try:
        pred.write_h5ad(partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {pred.n_obs} cells x {pred.n_vars} genes to {args.out}")


def _add_benchmark_options(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--data", required=True, help="input .h5ad file (raw counts in X)")
    bench.add_argument("--split", required=True, choices=SPLITS)
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
    bench.add_argument("--token-embedding", default=None, choices=CLI_TOKEN_EMBEDDINGS)
    bench.add_argument("--accelerator", default="auto")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    bench.add_argument(
        "--export",
        nargs=2,
        default=None,
        metavar=("FORMAT", "FOLDER"),
        help=f"also write the held-out real cells and every method's predictions to FOLDER as files of "
        f"FORMAT ({', '.join(EXPORT_FORMATS)}: .h5ad files that `cell-eval run` scores); files there are replaced",
    )


def _benchmark(args: argparse.Namespace) -> None:
    if (args.subset_key is None) != (args.subset_value is None):
        raise ValueError("--subset-key and --subset-value go together (e.g. --subset-key dataset --subset-value x).")
    check_h5ad(args.data)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {args.out} is a file; benchmark writes a directory of results.")
    check_writable_dir(out, f"--out {args.out}")
    export = None
    if args.export is not None:
        export_format, export = args.export
        if export_format not in EXPORT_FORMATS:
            raise ValueError(f"--export takes FORMAT FOLDER, FORMAT one of {EXPORT_FORMATS}; got {export_format!r}.")
        folder = Path(export)
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"--export folder {export} is a file; pass a folder.")
        check_writable_dir(folder, f"--export folder {export}")  # before training, not after

    from ..evaluation import run_benchmark

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
        progress_bar=_progress(args),
        export_cell_eval=export,
    )
