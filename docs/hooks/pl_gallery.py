"""Render the example image of every ``cf.pl`` plot into ``docs/images/pl/`` (the API page shows them).

A small simulated screen, a model trained on tiny budgets with three combinations held out,
the baselines, and one plot each; about a minute on one CPU core. Run from the repository root
after changing a plot, and commit the images::

    .venv/bin/python docs/hooks/pl_gallery.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

OUT = Path(__file__).resolve().parents[1] / "images" / "pl"
DPI = 90


def main() -> None:
    """Simulate, train, score and render every plot."""
    import matplotlib.pyplot as plt
    import torch

    import cellflow as cf
    from cellflow.evaluation import (
        AdditiveBaseline,
        ControlBaseline,
        LatentArithmeticBaseline,
        conditions_frame,
        score_held_out,
        split_combinations,
    )

    start = time.perf_counter()
    torch.set_num_threads(1)
    plt.rcParams["savefig.dpi"] = DPI
    OUT.mkdir(parents=True, exist_ok=True)

    adata = cf.datasets.simulate_perturbseq(
        n_cells=3000, n_genes=100, n_cell_types=2, n_perturbations=8, n_combinations=8, seed=3
    )
    setup = {"perturbation_key": "perturbation", "control": "control", "covariate_keys": ["cell_type"]}
    cf.pp.setup(adata, **setup)
    frame = conditions_frame(adata)
    split = split_combinations(frame, n_combinations=3, n_singles=0, seed=0)
    train = adata[split.train_mask].copy()
    cf.pp.setup(train, **setup)

    recorder = loss_recorder()
    model = cf.CellFlow(train, latent_dim=16, backbone_kwargs={"hidden_dim": 128, "n_blocks": 2}, seed=0)
    with vae_history() as vae_loss:
        model.train(
            vae_epochs=40,
            flow_steps=600,
            progress_bar=False,
            accelerator="cpu",
            trainer_kwargs={"callbacks": [recorder]},
        )
    print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)

    condition = split.held_out[0]
    context = {"cell_type": "type_0"}
    in_context = (frame["condition"] == condition) & (frame["cell_type"] == context["cell_type"])
    pred = cf.tl.generate(model, conditions=[condition], n_cells=int(in_context.sum()), covariates=context, seed=0)
    control = adata[adata.obs["perturbation"] == "control"]

    cf.pl.embedding(pred, adata, condition, show=False, save=OUT / "embedding.png")
    cf.pl.effect_scatter(
        pred, adata, control, condition=condition, n_labels=8, show=False, save=OUT / "effect_scatter.png"
    )

    baselines = [
        ControlBaseline().fit(train),
        AdditiveBaseline().fit(train),
        LatentArithmeticBaseline(model).fit(train),
    ]
    results = score_held_out(
        adata, frame, split.held_out, model=model, baselines=baselines, covariate_keys=["cell_type"], vae_ceiling=False
    )
    cf.pl.benchmark(results, metric="pearson_delta", show=False, save=OUT / "benchmark.png")

    # A model that records its loss curves keeps them in model.history; until then the curves
    # recorded here during model.train() stand in for them (the same losses, read as they were logged).
    history = dict(model.history)
    if "flow_loss" not in history:
        history |= {"vae_loss": vae_loss, **recorder.curves()}
    cf.pl.training(history, smooth=20, show=False, save=OUT / "training.png")
    cf.pl.conditions(model, show=False, save=OUT / "conditions.png")

    for path in sorted(OUT.glob("*.png")):
        print(f"{path.relative_to(OUT.parents[2])}: {path.stat().st_size / 1024:.0f} KB")
    print(f"done in {time.perf_counter() - start:.0f} s")


def loss_recorder():
    """A Lightning callback keeping the training loss of every step, one curve per fit (flow, then reflow)."""
    import lightning.pytorch as pl

    class LossRecorder(pl.Callback):
        def __init__(self) -> None:
            self.fits: list[list[list[float]]] = []

        def on_train_start(self, trainer, pl_module) -> None:
            self.fits.append([])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.fits[-1].append([float(trainer.global_step), float(loss)])

        def curves(self) -> dict[str, list[list[float]]]:
            return {name: fit for name, fit in zip(["flow_loss", "reflow_loss"], self.fits) if fit}

    return LossRecorder()


@contextmanager
def vae_history() -> Iterator[list[float]]:
    """Keep scvi-tools' per-epoch training ELBO of the VAE trained inside the ``with`` block."""
    import scvi

    losses: list[float] = []
    original = scvi.model.SCVI.train

    def train(model, *args, **kwargs):
        result = original(model, *args, **kwargs)
        losses.extend(model.history["elbo_train"]["elbo_train"].astype(float).tolist())
        return result

    scvi.model.SCVI.train = train
    try:
        yield losses
    finally:
        scvi.model.SCVI.train = original


if __name__ == "__main__":
    sys.exit(main())
