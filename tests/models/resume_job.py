"""A training run for the fault tests: ``python resume_job.py CHECKPOINT_DIR OUT.npy`` (killed and restarted)."""

import sys

import numpy as np
import torch

import cellflow as cf

TRAIN = {
    "vae_epochs": 4,
    "flow_steps": 400,
    "reflow_rounds": 1,
    "reflow_kwargs": {"steps": 100, "pairs_per_group": 16, "ode_steps": 2},
}
GENERATE = {"conditions": ["control"], "n_cells": 30, "covariates": {"cell_type": "type_0"}, "seed": 1}


def run(checkpoint_dir=None) -> np.ndarray:
    """Train the small model (resuming from ``checkpoint_dir`` when given) and generate cells."""
    torch.set_num_threads(1)
    adata = cf.datasets.simulate_perturbseq(n_cells=800, n_genes=40, n_cell_types=2, seed=0)
    cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    model = cf.CellFlow(adata, latent_dim=4, backbone_kwargs={"hidden_dim": 16, "n_blocks": 1}, seed=5)
    model.train(**TRAIN, checkpoint_dir=checkpoint_dir, progress_bar=False, accelerator="cpu")
    return cf.tl.generate(model, **GENERATE).obsm["X_cellflow"]


if __name__ == "__main__":
    np.save(sys.argv[2], run(sys.argv[1]))
