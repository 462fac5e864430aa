"""Both training stages under Lightning's DDP on 2 CPU processes (gloo), from a backed AnnData."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellflow as cf

JOB = Path(__file__).with_name("ddp_job.py")


def test_two_processes_train_both_stages_and_the_saved_model_generates(tmp_path):
    adata = cf.datasets.simulate_perturbseq(n_cells=1200, n_genes=40, n_cell_types=2, seed=0)
    adata.write_h5ad(tmp_path / "screen.h5ad")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(cf.__file__).parents[1])}
    run = subprocess.run(
        [sys.executable, str(JOB), "2", str(tmp_path / "screen.h5ad"), str(tmp_path / "model")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    hashes = dict(re.findall(r"rank (\d) of 2 trained weights ([0-9a-f]{16})", run.stdout))
    assert set(hashes) == {"0", "1"}, run.stdout
    assert hashes["0"] == hashes["1"]  # both stages kept the ranks' weights identical
    # The latent pass was split over the two ranks and gathered: what one process computes.
    latent_pass = dict(re.findall(r"rank (\d) of 2 latent pass of 1200 cells equals one process's: (\w+)", run.stdout))
    assert latent_pass == {"0": "True", "1": "True"}, run.stdout
    # So was the pass over the counts that estimates the gene offsets, its sums added over the ranks.
    shares = dict(re.findall(r"rank (\d) of 2 summed the counts of chunks ([\d ]*)", run.stdout))
    chunks = [sorted(map(int, shares.get(r, "").split())) for r in ("0", "1")]
    assert chunks[0] and chunks[1] and sorted(chunks[0] + chunks[1]) == list(range(5)), run.stdout  # 1,200 / 256
    offsets = dict(re.findall(r"rank (\d) of 2 gene offsets equal one process's: (\w+)", run.stdout))
    assert offsets == {"0": "True", "1": "True"}, run.stdout

    model = cf.CellFlow.load(tmp_path / "model")
    assert model.is_trained and model.module.sampling.reflow_rounds == 1

    # Generation was shared out between the ranks: the file holds what one process makes, and
    # both ranks returned it.
    assert set(re.findall(r"rank (\d) of 2 generated 3000 cells to generated.h5ad", run.stdout)) == {"0", "1"}
    together = ad.read_h5ad(tmp_path / "generated.h5ad")
    conditions = list(together.obs["perturbation"].unique())
    alone = cf.tl.generate(model, conditions=conditions, n_cells=1500, covariates={"cell_type": "type_0"}, seed=3)
    assert (together.X != alone.X).nnz == 0
    np.testing.assert_array_equal(together.obsm["X_cellflow"], alone.obsm["X_cellflow"])
    pd.testing.assert_frame_equal(together.obs, alone.obs)

    def mean_log(x):
        x = x.toarray() if sp.issparse(x) else np.asarray(x)
        return np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4).mean(0)

    def real_mean(label):
        labels, in_context = adata.obs["perturbation"], (adata.obs["cell_type"] == "type_0").to_numpy()
        return mean_log(adata[(labels == label).to_numpy() & in_context].X)

    # The perturbation with the largest effect: the model must have learnt it (a short run
    # cannot get the small ones right, in one process or two).
    control = real_mean("control")
    perturbed = [c for c in adata.obs["perturbation"].unique() if c != "control"]
    condition = max(perturbed, key=lambda c: np.abs(real_mean(c) - control).mean())
    pred = cf.tl.generate(
        model, conditions=[condition, "control"], covariates={"cell_type": "type_0"}, n_cells=200, seed=0
    )
    assert pred.n_obs == 400 and pred.n_vars == adata.n_vars
    generated = mean_log(pred[(pred.obs["perturbation"] == condition).to_numpy()].X)
    truth = real_mean(condition)
    assert np.abs(generated - truth).mean() < 0.6 * np.abs(control - truth).mean()


def test_a_strategy_needs_a_number_of_devices(screen):
    _, _, _, train = screen
    model = cf.CellFlow(train, latent_dim=4, seed=0)
    for devices in ("auto", -1, 0, [0, 1]):
        with pytest.raises(ValueError, match="give devices as a number of devices per node"):
            model.train(devices=devices, trainer_kwargs={"strategy": "ddp"}, accelerator="cpu", progress_bar=False)
    assert not model.is_trained
