"""The VAE's training plan: scvi-tools' optimisation, with its metrics logged once per epoch."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scvi
import torch

import cellflow.vae._plan as plan_module
from tests.conftest import fit_small_vae


def fit(monkeypatch, plan_class):
    """LatentVAE.fit with ``plan_class`` on 600 cells x 30 genes for 3 epochs; the VAE and scvi-tools' history."""
    monkeypatch.setattr(plan_module, "EpochLoggingPlan", plan_class)
    counts = sp.csr_matrix(np.random.default_rng(0).poisson(1.0, (600, 30)).astype(np.float32))
    vae, history, _ = fit_small_vae(monkeypatch, counts, max_epochs=3, kl_warmup_epochs=None, kl_warmup_steps=40)
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
    # Once per epoch here, the weight of the epoch's last step: 540 training cells in minibatches of
    # 64 are 9 steps an epoch, the weight step / 40. scvi-tools logs every step, and Lightning keeps
    # every tenth (steps 9 and 19 of the 27), so its last value is older.
    np.testing.assert_allclose(ours_history["kl_weight"], [8 / 40, 17 / 40, 26 / 40], rtol=1e-6)
    assert their_history["kl_weight"][-1] < ours_history["kl_weight"][-1]
    assert ours.curves["vae_loss"] == theirs.curves["vae_loss"]
