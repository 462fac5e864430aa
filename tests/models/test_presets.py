"""Presets: the backbone's width and the training lengths they set, and the options that win over them."""

from __future__ import annotations

import pytest

import cellflow as cf
import cellflow.models._training as training_module
from cellflow._constants import PRESET_NAMES
from cellflow.models import PRESETS


@pytest.fixture
def stages(monkeypatch):
    """The VAE, flow and reflow options train() resolves (the training itself is skipped)."""
    seen = {}

    def capture(model, folder, vae, flow, again, **kwargs):
        seen.update(vae=vae, flow=flow, reflow=again)

    monkeypatch.setattr(training_module, "train_in_stages", capture)
    return seen


def test_each_preset_sets_the_width_and_the_lengths(screen, stages):
    _, _, _, train = screen
    expected = {"fast": (128, 3600, 1000, 0), "default": (128, 8000, 1000, 0), "long": (256, 8000, 2000, 1)}
    assert tuple(expected) == tuple(PRESETS) == PRESET_NAMES  # the command line offers PRESET_NAMES
    for name, (width, vae_steps, flow_steps, rounds) in expected.items():
        model = cf.CellFlow(train, latent_dim=4, preset=name, seed=0)
        assert model.config.backbone_kwargs == {"hidden_dim": width}
        assert model.module.backbone.hidden_dim == width
        model.train(progress_bar=False, accelerator="cpu")
        assert (stages["vae"].target_steps, stages["flow"].steps, stages["reflow"].rounds) == (
            vae_steps,
            flow_steps,
            rounds,
        )
    assert cf.CellFlow(train, latent_dim=4).preset == "default"


def test_options_given_win_over_the_preset(screen, stages):
    _, _, _, train = screen
    model = cf.CellFlow(train, latent_dim=4, preset="long", backbone_kwargs={"hidden_dim": 32, "n_blocks": 1})
    assert model.config.backbone_kwargs == {"hidden_dim": 32, "n_blocks": 1}
    model.train(flow_steps=7, reflow_rounds=0, vae_kwargs={"target_steps": 50}, progress_bar=False)
    assert (stages["vae"].target_steps, stages["flow"].steps, stages["reflow"].rounds) == (50, 7, 0)
    model.train(flow_kwargs={"steps": 9}, reflow_kwargs={"rounds": 2}, progress_bar=False)
    assert (stages["flow"].steps, stages["reflow"].rounds) == (9, 2)
    # Other backbones keep their own widths: the preset's width is the MLP's.
    other = cf.CellFlow(train, latent_dim=4, backbone="set_attention", preset="fast")
    assert "hidden_dim" not in other.config.backbone_kwargs


def test_an_unknown_preset_is_refused_with_the_names(screen):
    _, _, _, train = screen
    with pytest.raises(ValueError, match=r"preset='quick' is not one of \['fast', 'default', 'long'\]"):
        cf.CellFlow(train, preset="quick")
