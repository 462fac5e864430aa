"""Mixed-precision training of the flow (``precision=``): Lightning's autocast, float32 weights and pairing."""

import pytest
import torch

import cellflow as cf

SMALL_FLOW = {"cells_per_group": 32, "progress_bar": False, "accelerator": "cpu", "lr": 3e-3}


def _vae_model(train):
    # Noise as the source: a flow with much to learn (from N(0, I) to the cells), so the loss falls clearly.
    model = cf.CellFlow(train, latent_dim=4, source="noise", backbone_kwargs={"hidden_dim": 32, "n_blocks": 1}, seed=0)
    return model.train_vae(epochs=2, progress_bar=False, accelerator="cpu")


def _validation_loss(model) -> float:
    """Float32 flow-matching loss of the trained flow on fixed minibatches of all training groups."""
    return model.flow_loss(validation=False)


def test_bf16_mixed_training_learns_as_float32_does(screen):
    train = screen[3]
    full_model = _vae_model(train).train_flow(steps=1, **{**SMALL_FLOW, "lr": 0.0})
    start = _validation_loss(full_model)
    full_model.train_flow(steps=150, precision="32-true", **SMALL_FLOW)
    full = _validation_loss(full_model)
    mixed_model = _vae_model(train).train_flow(steps=150, precision="bf16-mixed", **SMALL_FLOW)
    mixed = _validation_loss(mixed_model)
    # Autocast changes the arithmetic, not what is learnt: both fall well below the untrained
    # loss, and to about the same level; the weights stay float32 (master weights).
    assert full < 0.8 * start and mixed < 0.8 * start
    assert mixed == pytest.approx(full, rel=0.15)
    assert all(p.dtype == torch.float32 for p in mixed_model.module.parameters())
    assert mixed_model.flow_config.precision == "bf16-mixed"


def test_unknown_precision_is_refused_before_training(screen):
    _, _, _, train = screen
    model = cf.CellFlow(train, latent_dim=4, seed=0)
    with pytest.raises(ValueError, match="precision='bf16'.*bf16-mixed"):
        model.train(flow_kwargs={"precision": "bf16"}, progress_bar=False)
    assert model.vae is None  # refused before the VAE trained
