"""How much of the gene offsets' sum an unseen combination should take: a diagnostic on Norman's held-out doubles.

An unseen combination is offset by the control cells' gene offsets plus the sum of its tokens'
changes of them (:class:`~cellflow.flow.GeneOffsets`). This script trains one model per preset
and seed on the split of ``norman_combinations.py`` and scores the five held-out doubles (as many
predicted cells as real ones, one draw) with the tokens' summed changes scaled by 1 (what the
library keeps on this split), 0.5 and 0 (the control cells' offsets only), and without any
offsets; the weights and the draws are the same in every row. It is a diagnostic, not a way to
choose the scale: the held-out doubles are what it scores. The library chooses the scale on
training doubles whose singles were measured (``combination_scale``), and the Norman training
cells of this split hold none.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/offset_combinations.py --preset P --seed S --out DIR``
per preset and seed, then ``--report DIR1/results.csv ... --results-page`` (section ``offset_combinations``).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "norman2019_mcfaline2023_subset.h5ad"
SCALES = (1.0, 0.5, 0.0)
METRICS = ["energy_distance_all", "pearson_delta_top20", "mmd_all"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Norman 2019 subset (.h5ad)")
    parser.add_argument("--preset", default="default", help="the model's preset")
    parser.add_argument("--seed", type=int, default=0, help="training and generation seed")
    parser.add_argument("--out", type=Path, default=None, help="directory for results.csv")
    parser.add_argument("--report", type=Path, nargs="+", default=None, help="earlier runs' results.csv to summarise")
    parser.add_argument("--results-page", action="store_true", help="write the section of docs/results.md")
    args = parser.parse_args(argv)
    if args.report is None and not args.data.exists():
        parser.error(f"--data {args.data}: no such file (the shared data folder holds it; see its README).")
    return args


def run(args: argparse.Namespace) -> pd.DataFrame:
    """Train one model and score the held-out doubles under every scale of the offsets' changes."""
    import norman_combinations as nc
    import peer_cellflow as pc
    from time_to_quality import Scorer

    import cellflow as cf
    from cellflow.metrics import log_normalize

    adata, frame, train, held_out = pc.build_split(nc, args.data, 0)
    counts = frame["condition"].value_counts().to_dict()
    scorer = Scorer(adata, frame, train, held_out)
    model = cf.CellFlow(train, seed=args.seed, preset=args.preset)
    model.train(progress_bar=False, accelerator="cpu")
    trained = model.module.gene_offsets
    variants = {f"changes x{scale:g}": _scaled(trained, scale) for scale in SCALES} | {"no offsets": None}
    rows = []
    for name, offsets in variants.items():
        model.module.gene_offsets = offsets
        predictions = {
            label: log_normalize(cf.tl.generate(model, conditions=[label], n_cells=counts[label], seed=args.seed).X)
            for label in held_out
        }
        scores = scorer.score(predictions)
        rows.append({"preset": args.preset, "seed": args.seed, "offsets": name, **{m: scores[m] for m in METRICS}})
        print(f"  {args.preset} seed {args.seed} {name}: " + ", ".join(f"{m} {scores[m]:.4f}" for m in METRICS))
    model.module.gene_offsets = trained
    return pd.DataFrame(rows)


def _scaled(offsets, scale: float):
    """The offsets with an unseen combination's summed changes multiplied by ``scale`` (its ``combination_scale``)."""
    scaled = copy.deepcopy(offsets)
    scaled.shifts.combination_scale = scale
    return scaled


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over seeds of every preset and variant."""
    grouped = results.groupby(["preset", "offsets"], sort=False)[METRICS]
    mean, sd = grouped.mean(), grouped.std().fillna(0.0)
    return mean.map("{:.4f}".format) + " ± " + sd.map("{:.4f}".format)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Run one preset and seed (or summarise earlier runs) and print the summary."""
    args = parse_args(argv)
    if args.report is not None:
        results = pd.concat([pd.read_csv(p) for p in args.report], ignore_index=True)
    else:
        results = run(args)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            results.to_csv(args.out / "results.csv", index=False)
    table = summary(results)
    print(table.to_string())
    if args.results_page:
        from _results import markdown_table, provenance, write_results_section

        seeds = ", ".join(map(str, sorted(results["seed"].unique())))
        note = (
            f"Norman's five held-out doubles, seeds {seeds}; one model per preset and seed, the same weights and "
            "draws in every row; energy distance and MMD on 50 PCs of all real cells. Mean ± sd over the seeds."
        )
        write_results_section("offset_combinations", provenance(note) + "\n\n" + markdown_table(table, index=True))
    return results


if __name__ == "__main__":
    main()
