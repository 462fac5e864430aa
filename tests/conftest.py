"""Shared fixtures: small AnnData objects and the real data folder."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    # Small matrices on 2 cores: one thread avoids OpenMP contention that slows tests ~10x.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_adata() -> ad.AnnData:
    """60 cells x 8 genes of integer counts: control, A, B and A+B, two cell types."""
    rng = np.random.default_rng(0)
    labels = np.array(["control"] * 24 + ["A"] * 12 + ["B"] * 12 + ["A+B"] * 12)
    obs = pd.DataFrame(
        {
            "perturbation": labels,
            "cell_type": np.tile(["x", "y"], 30),
            "dose": np.where(labels == "control", "0", np.where(np.char.find(labels, "+") > 0, "1+0.5", "1")),
            "time": np.tile([1.0, 2.0, 3.0], 20),
        },
        index=[f"cell{i}" for i in range(60)],
    )
    counts = rng.poisson(3.0, size=(60, 8)).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs)
    adata.var_names = [f"g{i}" for i in range(8)]
    return adata


def shared_file(name: str) -> Path:
    """Path of a real data set in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(
            f"real data {name} not found at {path} (../shared/data is only present in the project workspace/CI)"
        )
    return path


@pytest.fixture(scope="session")
def screen():
    """A small simulated screen (2 cell types), its condition table and a split holding out 2 combinations."""
    import cellflow as cf
    from cellflow.evaluation import conditions_frame, split_combinations

    adata = cf.datasets.simulate_perturbseq(
        n_cells=2400, n_genes=60, n_cell_types=2, n_perturbations=8, n_combinations=8, seed=3
    )
    setup = {"perturbation_key": "perturbation", "control": "control", "covariate_keys": ["cell_type"]}
    cf.pp.setup(adata, **setup)
    frame = conditions_frame(adata)
    split = split_combinations(frame, n_combinations=2, n_singles=0, seed=0)
    train = adata[split.train_mask].copy()
    cf.pp.setup(train, **setup)
    return adata, frame, split, train


@pytest.fixture(scope="session")
def trained(screen):
    """A CellFlow model trained briefly on the training part of ``screen``, with one reflow round (Euler sampling)."""
    import cellflow as cf

    _, _, _, train = screen
    model = cf.CellFlow(train, latent_dim=16, backbone_kwargs={"hidden_dim": 128, "n_blocks": 2}, seed=0)
    model.train(vae_epochs=40, flow_steps=600, reflow_rounds=1, progress_bar=False, accelerator="cpu")
    return model


@pytest.fixture
def trained_copy(trained, tmp_path):
    """An independent copy of ``trained`` (saved and loaded), for tests that change a model's weights."""
    import cellflow as cf

    trained.save(tmp_path / "trained")
    return cf.CellFlow.load(tmp_path / "trained")


def fit_small_vae(monkeypatch, counts, **options):
    """``LatentVAE.fit`` of a small VAE on the CPU with scvi-tools' ``SCVI.train`` watched.

    Returns the VAE, scvi-tools' history after training (each entry a flat float array) and the
    dispersions ``px_r`` the module held when training started. ``options`` override the defaults
    (a 4-dimensional latent, 16 hidden units, 2 epochs of minibatches of 64).
    """
    import scvi

    from cellflow.vae import LatentVAE, VAEConfig

    seen = {}
    train = scvi.model.SCVI.train

    def spy(self, *args, **kwargs):
        seen["px_r"] = self.module.px_r.detach().clone().numpy()
        result = train(self, *args, **kwargs)
        seen["history"] = {key: np.asarray(value, dtype=float).ravel() for key, value in self.history.items()}
        return result

    monkeypatch.setattr(scvi.model.SCVI, "train", spy)
    defaults = {
        "batch": None,
        "config": VAEConfig(n_input=counts.shape[1], n_latent=4, n_hidden=16),
        "max_epochs": 2,
        "batch_size": 64,
        "accelerator": "cpu",
        "devices": 1,
        "progress_bar": False,
    }
    vae = LatentVAE.fit(counts, **(defaults | options))
    return vae, seen["history"], seen["px_r"]
