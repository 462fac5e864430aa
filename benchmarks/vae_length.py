"""How long the VAE must train on a large screen: held-out fit after 5, 10, 20... epochs from disk.

The evidence behind the default length of the VAE for large screens
(:meth:`cellflow.train.VAETrainingConfig.epochs_for`, ``min_epochs``). A screen of ``--cells``
training cells plus ``--heldout`` held-out cells (the last rows; the simulator shuffles the
conditions) is simulated to an ``.h5ad`` file; for each ``--epochs`` value the VAE is trained
from the backed file on the training rows with the library's options (the default architecture,
batch 128, the KL warm-up of :meth:`~cellflow.train.VAETrainingConfig.kl_warmup_for`),
then scored on the held-out rows: reconstruction negative log-likelihood and KL divergence per
cell (scvi-tools' own loss terms, at the weight-free ELBO), and the seconds the training took.
The runs share the file and the seed and differ only in their length.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python -u benchmarks/vae_length.py --cells 100000 --epochs 5 10 20
[--heldout 10000] [--genes 2000] [--threads 2] [--results-page]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _results import RESULTS_FLAG, RESULTS_HELP, command_line, write_results_section


def heldout_terms(vae, matrix, start: int, stop: int, chunk: int = 4096) -> tuple[float, float]:
    """Mean reconstruction NLL and KL divergence per cell over rows ``start:stop`` (scvi-tools' loss terms)."""
    import torch

    from cellflow.vae._disk import read_rows

    module = vae.module.eval()
    recon, kl, cells = 0.0, 0.0, 0
    with torch.no_grad():
        for begin in range(start, stop, chunk):
            x = torch.from_numpy(read_rows(matrix, begin, min(begin + chunk, stop)))
            tensors = {"X": x, "batch": torch.zeros(len(x), 1), "labels": torch.zeros(len(x), 1)}
            _, _, losses = module(tensors, loss_kwargs={"kl_weight": 1.0})
            recon += float(losses.reconstruction_loss["reconstruction_loss"].sum())
            kl += float(losses.kl_local["kl_divergence_z"].sum())
            cells += len(x)
    return recon / cells, kl / cells


def markdown_table(table: pd.DataFrame) -> str:
    """The rows as Markdown: per-cell terms to a tenth of a nat (their differences are small), the rest to 4 digits."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
        return f"{value:,}"

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def final_kl_fraction(warmup: dict, epochs: int, steps: int) -> float:
    """Share of the maximum KL weight reached at the last of ``steps`` steps (scvi-tools' linear warm-up)."""
    if warmup["kl_warmup_epochs"]:
        return min(1.0, (epochs - 1) / warmup["kl_warmup_epochs"])
    return min(1.0, (steps - 1) / warmup["kl_warmup_steps"])


def train_and_score(args: argparse.Namespace, path: Path) -> list[dict]:
    """Simulate the screen to ``path``, then train and score the VAE for each ``--epochs``; one row each."""
    import anndata as ad

    import cellflow as cf
    from cellflow.models._cells import vae_config
    from cellflow.train import VAETrainingConfig
    from cellflow.vae import LatentVAE
    from cellflow.vae._disk import RowRange

    total = args.cells + args.heldout
    cf.datasets.simulate_perturbseq(
        n_cells=total, n_genes=args.genes, n_perturbations=40, n_combinations=40, seed=0, out=path, overwrite=True
    )
    adata = ad.read_h5ad(path, backed="r")
    cf.pp.setup(adata, perturbation_key="perturbation", control="control")
    defaults = cf.CellFlow(adata, seed=0).config
    training = VAETrainingConfig()
    rows = []
    for epochs in args.epochs:
        warmup = training.kl_warmup_for(epochs, args.cells)
        tic = time.perf_counter()
        vae = LatentVAE.fit(
            RowRange(adata.X, 0, args.cells),
            batch=None,
            config=vae_config(defaults, args.genes),
            max_epochs=epochs,
            **warmup,
            batch_size=training.batch_size,
            accelerator="cpu",
            devices=1,
            progress_bar=False,
            kl_weight=defaults.vae_kl_weight,
            seed=0,
        )
        seconds = time.perf_counter() - tic
        recon, kl = heldout_terms(vae, adata.X, args.cells, total)
        steps = epochs * -(-args.cells // training.batch_size)
        rows.append(
            {
                "training cells": args.cells,
                "epochs": epochs,
                "steps": steps,
                "final KL weight": defaults.vae_kl_weight * final_kl_fraction(warmup, epochs, steps),
                "held-out NLL per cell": recon,
                "held-out KL per cell": kl,
                "held-out -ELBO per cell": recon + kl,
                "seconds": seconds,
            }
        )
        print(pd.DataFrame(rows).to_string(index=False), flush=True)
    adata.file.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000, help="training cells")
    parser.add_argument("--heldout", type=int, default=10_000, help="held-out cells scored after training")
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(RESULTS_FLAG, action="store_true", help=RESULTS_HELP)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="cellflow-vae-length-") as folder:  # the screen: 7.5 GB at 1M cells
        rows = train_and_score(args, Path(folder) / "screen.h5ad")
    table = pd.DataFrame(rows)
    markdown = markdown_table(table)
    print(markdown)
    if getattr(args, RESULTS_FLAG.strip("-").replace("-", "_")):
        write_results_section(f"vae_length-{args.cells}", f"`{command_line()}`\n\n{markdown}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
