"""Fixtures of the flow-training tests."""

import pytest

import cellflow as cf


@pytest.fixture
def vae_model(screen):
    """A model whose VAE is trained briefly on ``screen``'s training part, ready for ``train_flow``."""
    _, _, _, train = screen
    model = cf.CellFlow(train, latent_dim=4, backbone_kwargs={"hidden_dim": 32, "n_blocks": 1}, seed=0)
    return model.train_vae(epochs=2, progress_bar=False, accelerator="cpu")
