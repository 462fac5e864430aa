"""Within-condition spread of a trained model's generated latents against the real cells' (Norman 2019).

A flow that carries control cells to a condition should reproduce that condition's spread
in the latent space, not only its mean. This script measures, for a model saved by
``benchmarks/norman_combinations.py --save-models DIR``, the total within-condition variance
(sum over latent dimensions) of the real cells of every condition (encoded by the model's
VAE) and of as many generated cells, for the training conditions and the held-out doubles,
and the same for latent arithmetic alone (the control cells moved by the condition's
shift, which keeps the control cells' spread). A ratio well below 1 on the *training*
conditions means the flow contracts the cells towards their mean: an error of the flow's
fit, not of its generalisation.

Run: ``.venv/bin/python -u benchmarks/flow_spread.py --model DIR/seed0 [--data PATH] [--n-cells 500] [--split-seed 0]
[--results-page]`` (``--results-page`` writes the means by split into the section ``flow_spread`` of
``docs/results.md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from norman_combinations import DEFAULT_DATA, N_DOUBLES, load_norman  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model saved by norman_combinations.py")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Norman/McFaline-Figueroa subset (.h5ad)")
    parser.add_argument("--n-cells", type=int, default=500, help="generated cells per condition")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generation")
    parser.add_argument("--split-seed", type=int, default=0, help="the --split-seed the model was trained with")
    parser.add_argument(
        "--results-page", action="store_true", help="write the means by split into docs/results.md (off by default)"
    )
    return parser.parse_args(argv)


def spread_table(model, adata, held_out: list[str], n_cells: int, seed: int) -> pd.DataFrame:
    """One row per condition: total within-condition latent variance of real, generated and latent-arithmetic cells."""
    import cellflow as cf
    from cellflow.evaluation import conditions_frame

    real = adata.copy()
    cf.tl.encode(model, real)
    labels = conditions_frame(real)["condition"].astype(str).to_numpy()
    trained = [c for c in model.setup.conditions if c != model.setup.control]
    control = real.obsm["X_cellflow"][labels == model.setup.control]
    rows = []
    for condition in trained + held_out:
        generated = cf.tl.generate(model, conditions=[condition], n_cells=n_cells, seed=seed)
        label = str(generated.obs[model.setup.perturbation_key].iloc[0])
        cells = real.obsm["X_cellflow"][labels == label]
        if len(cells) < 2:
            continue
        # Latent arithmetic keeps the control cells' spread: a constant shift does not change variance.
        rows.append(
            {
                "condition": label,
                "split": "held out" if condition in held_out else "training",
                "real": float(cells.var(axis=0).sum()),
                "generated": float(generated.obsm["X_cellflow"].var(axis=0).sum()),
                "latent_arithmetic": float(control.var(axis=0).sum()),
            }
        )
    table = pd.DataFrame(rows).set_index("condition")
    table["generated / real"] = table["generated"] / table["real"]
    table["latent_arithmetic / real"] = table["latent_arithmetic"] / table["real"]
    return table


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Print the per-condition spreads and their means by split."""
    args = parse_args(argv)
    import cellflow as cf
    from cellflow.evaluation import conditions_frame, split_combinations

    adata = load_norman(args.data)
    cf.pp.setup(adata, perturbation_key="perturbation", control="control")
    split = split_combinations(conditions_frame(adata), n_combinations=N_DOUBLES, n_singles=0, seed=args.split_seed)
    model = cf.CellFlow.load(args.model)
    table = spread_table(model, adata, sorted(split.held_out), args.n_cells, args.seed)
    with pd.option_context("display.width", 160, "display.precision", 3):
        print(f"total within-condition latent variance (sum over {model.config.latent_dim} dimensions), {args.model}")
        print(table.to_string())
        print("\nmean by split:")
        print(table.groupby("split").mean(numeric_only=True).to_string())
    if args.results_page:
        from _results import markdown_table, provenance, write_results_section

        means = table.groupby("split").mean(numeric_only=True)
        means.insert(0, "conditions", table.groupby("split").size())
        intro = provenance(
            f"Model {args.model} (coupling {getattr(model.flow_config, 'coupling', None)!r}); total within-condition "
            f"latent variance, sum over {model.config.latent_dim} dimensions, mean over the conditions of each split."
        )
        formats = {c: "{:.3f}" for c in means.columns if c != "conditions"}
        write_results_section("flow_spread", f"{intro}\n\n{markdown_table(means, formats, index=True)}")
    return table


if __name__ == "__main__":
    main()
