"""The VAE's training plan: scvi-tools' optimisation, with its metrics logged once per epoch."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scvi
import torch

import cellflow.vae._plan as plan_module
from cellflow.vae import LatentVAE, VAEConfig


def fit(monkeypatch, plan_class):
    """LatentVAE.fit with ``plan_class`` on 600 cells x 30 genes for 3 epochs; the VAE and scvi-tools' history."""
    monkeypatch.setattr(plan_module, "EpochLoggingPlan", plan_class)
    history = {}
    train = scvi.model.SCVI.train

    def spy(self, *args, **kwargs):
        result = train(self, *args, **kwargs)
        history.update({key: np.asarray(value, dtype=float).ravel() for key, value in self.history.items()})
        return result

    monkeypatch.setattr(scvi.model.SCVI, "train", spy)
    counts = sp.csr_matrix(np.random.default_rng(0).poisson(1.0, (600, 30)).astype(np.float32))
    vae = LatentVAE.fit(
        counts,
        batch=None,
        config=VAEConfig(n_input=30, n_latent=4, n_hidden=16),
        max_epochs=3,
        batch_size=64,
        accelerator="cpu",
        devices=1,
        progress_bar=False,
        kl_warmup_epochs=None,
        kl_warmup_steps=20,
    )
    return vae, history


def test_epoch_logging_trains_exactly_as_scvi_tools_plan_and_keeps_its_curves(monkeypatch):
    ours, ours_history = fit(monkeypatch, plan_module.EpochLoggingPlan)
    theirs, their_history = fit(monkeypatch, scvi.train.TrainingPlan)
    # Same loss, same gradients, same draws: the same weights to the bit.
    for (name, a), (_, b) in zip(ours.module.state_dict().items(), theirs.module.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # The epoch curves scvi-tools records, under its names, with its values.
    for key in ("elbo_train", "reconstruction_loss_train", "kl_local_train", "kl_global_train"):
        assert len(ours_history[key]) == 3
        np.testing.assert_allclose(ours_history[key], their_history[key], rtol=1e-6)
    np.testing.assert_allclose(ours_history["train_loss"], their_history["train_loss"], rtol=1e-5)
    # scvi-tools logs the KL weight at every step; once per epoch here, the weight of its last step.
    assert their_history["kl_weight"][-1] == ours_history["kl_weight"][-1] < 1.0
    assert ours.curves["vae_loss"] == theirs.curves["vae_loss"]
