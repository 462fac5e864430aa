"""The VAE's training plans side by side: scvi-tools' own, cellflow's (logging once per epoch), and a fused Adam.

What it measures. The VAE of the library defaults (scvi-tools' SCVI, cellflow's architecture,
batch 128, the dispersions' moment start) on the training cells of the Norman split of
``norman_combinations.py``, trained for ``--epochs`` epochs under three training plans, in one
process, on the same ``--threads`` threads, in turn for ``--repeats`` rounds (so a slow spell of
the machine falls on every plan alike):

- ``scvi``: scvi-tools' :class:`~scvi.train.TrainingPlan` (six ``self.log`` calls a step, Adam);
- ``epoch_logging``: :class:`cellflow.vae._plan.EpochLoggingPlan`, cellflow's (scvi-tools' Adam;
  the same weights to the bit, ``tests/vae/test_plan.py``);
- ``fused``: a candidate, that plan with torch's fused Adam (the same update up to rounding).

Each row: the fit's seconds (best and median over rounds), milliseconds per step (the median fit,
set-up and validation included, over its training steps) and the speed-up over ``scvi``; the
final training ELBO shows the plans train alike.

Run: ``.venv/bin/python -u benchmarks/vae_step.py [--epochs 40] [--repeats 3] [--threads 2] [--results-page]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def parse_args(argv: list[str] | None = None, default_data: Path | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data, help="the Norman/McFaline-Figueroa subset (.h5ad)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs of every fit")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three plans")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--results-page", action="store_true", help="write the table into docs/results.md")
    return parser.parse_args(argv)


def plans() -> dict:
    """The three training plans, by name."""
    import scvi

    from cellflow.vae._plan import EpochLoggingPlan

    class FusedAdamPlan(EpochLoggingPlan):
        # scvi-tools' private hook that builds its Adam (scvi-tools 1.4): the same settings, fused.
        def _optimizer_creator_fn(self, optimizer_cls):
            return lambda params: optimizer_cls(
                params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, fused=True
            )

    return {"scvi": scvi.train.TrainingPlan, "epoch_logging": EpochLoggingPlan, "fused": FusedAdamPlan}


def fit(train, config, plan_class, epochs: int) -> tuple[float, float, int]:
    """Seconds of one VAE fit (``config``: the model's VAE) under ``plan_class``, its last training ELBO and steps."""
    import cellflow.vae._plan as plan_module
    from cellflow.vae import LatentVAE

    original = plan_module.EpochLoggingPlan
    plan_module.EpochLoggingPlan = plan_class  # what cellflow.vae._scvi._prepare hands to scvi-tools
    try:
        start = time.perf_counter()
        vae = LatentVAE.fit(
            train.X, batch=None, config=config, max_epochs=epochs, batch_size=128, progress_bar=False, seed=0
        )
        seconds = time.perf_counter() - start
    finally:
        plan_module.EpochLoggingPlan = original
    # scvi-tools holds out a tenth of the cells for validation.
    steps = epochs * -(-(train.n_obs - round(0.1 * train.n_obs)) // 128)
    return seconds, vae.curves["vae_loss"][-1], steps


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Fit the VAE under each plan, ``--repeats`` rounds, and print (optionally write) the table."""
    import norman_combinations as nc
    import peer_cellflow as pc

    args = parse_args(argv, default_data=nc.DEFAULT_DATA)
    pc.limit_threads(args.threads)
    import cellflow as cf
    from cellflow.models._cells import vae_config

    _, _, train, _ = pc.build_split(nc, args.data, 0)
    config = vae_config(cf.CellFlow(train, seed=0).config, train.n_vars)  # the library's default VAE
    rows = []
    for round_ in range(args.repeats):
        for name, plan_class in plans().items():
            seconds, elbo, steps = fit(train, config, plan_class, args.epochs)
            rows.append({"plan": name, "round": round_, "seconds": seconds, "elbo_train": elbo, "steps": steps})
            print(f"  round {round_} {name}: {seconds:.2f} s, ELBO {elbo:.2f}", flush=True)
    runs = pd.DataFrame(rows)
    table = runs.groupby("plan", sort=False).agg(
        best_s=("seconds", "min"),
        median_s=("seconds", "median"),
        elbo_train=("elbo_train", "last"),
        steps=("steps", "first"),
    )
    table["ms_per_step"] = 1000 * table["median_s"] / table["steps"]
    table["speedup"] = table.loc["scvi", "median_s"] / table["median_s"]
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    if args.results_page:
        from _results import markdown_table, provenance, write_results_section

        intro = provenance(
            f"The default VAE on the {train.n_obs:,} training cells of the Norman split, {args.epochs} epochs of batch "
            f"128 per fit, the three plans in turn for {args.repeats} rounds; speed-up of the median over scvi-tools' "
            "plan."
        )
        formats = {"best_s": "{:.2f}", "median_s": "{:.2f}", "elbo_train": "{:.2f}", "ms_per_step": "{:.2f}"}
        formats["speedup"] = "{:.2f}x"
        write_results_section("vae_step", f"{intro}\n\n{markdown_table(table, formats, index=True)}")
    return table


if __name__ == "__main__":
    main()
