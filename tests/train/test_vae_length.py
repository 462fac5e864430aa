"""The VAE's default length and KL warm-up, chosen from the number of cells."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellflow.train import VAETrainingConfig
from cellflow.train._config import MIN_EPOCHS
from tests.conftest import fit_small_vae


@pytest.mark.parametrize("n_cells", [5961, 12_000, 20_000, 100_000])
def test_the_default_length_aims_at_target_steps(n_cells):
    training = VAETrainingConfig()
    epochs = training.epochs_for(n_cells)
    steps_per_epoch = n_cells / training.batch_size
    assert abs(epochs * steps_per_epoch - training.target_steps) <= steps_per_epoch / 2  # the nearest whole epoch


def test_small_screens_are_capped_and_large_ones_get_the_fewest_epochs():
    training = VAETrainingConfig()
    assert training.epochs_for(500) == 400
    assert training.epochs_for(2_000_000) == training.epochs_for(10_000_000) == MIN_EPOCHS
    # above the size where target_steps covers MIN_EPOCHS, the time per cell stops falling
    largest = training.target_steps * training.batch_size // MIN_EPOCHS
    assert training.epochs_for(2 * largest) == MIN_EPOCHS
    assert VAETrainingConfig(epochs=7).epochs_for(10_000_000) == 7
    assert VAETrainingConfig(min_epochs=3, target_steps=10).epochs_for(1_000) == 3


def test_min_epochs_is_checked():
    with pytest.raises(ValueError, match="min_epochs=0 at least 1"):
        VAETrainingConfig(min_epochs=0)


def test_the_kl_warmup_keeps_scvi_tools_epochs_for_small_screens_and_ends_at_an_eighth_for_large_ones():
    training = VAETrainingConfig()
    assert training.kl_warmup_for(172, 5961) == {"kl_warmup_epochs": 400, "kl_warmup_steps": None}
    for n_cells in (100_000, 1_000_000):
        epochs = training.epochs_for(n_cells)
        plan = training.kl_warmup_for(epochs, n_cells)
        assert plan["kl_warmup_epochs"] is None
        steps = epochs * -(-n_cells // training.batch_size)
        assert plan["kl_warmup_steps"] / steps == 8  # the last step trains at 1/8 of the maximum weight


def kl_weight_of_training(monkeypatch, **warmup) -> float:
    """The KL weight scvi-tools logged while LatentVAE.fit trained 2 epochs of 9 steps on 600 cells."""
    counts = sp.csr_matrix(np.random.default_rng(0).poisson(1.0, (600, 30)).astype(np.float32))
    _, history, _ = fit_small_vae(monkeypatch, counts, **warmup)
    return float(history["kl_weight"][-1])


def test_the_warmup_in_steps_reaches_scvi_tools(monkeypatch):
    # 540 training cells (scvi-tools holds out a tenth) in minibatches of 64: 9 steps per epoch.
    in_steps = kl_weight_of_training(monkeypatch, kl_warmup_epochs=None, kl_warmup_steps=8 * 18)
    assert 0 < in_steps <= 1 / 8
    assert kl_weight_of_training(monkeypatch, kl_warmup_epochs=None, kl_warmup_steps=None) == 1.0
    assert kl_weight_of_training(monkeypatch, kl_warmup_epochs=400) == pytest.approx(1 / 400)
