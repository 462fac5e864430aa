"""A saved model, loaded with its training data, trains further and reflows exactly as the model in memory does."""

import numpy as np
import pytest

import cellflow as cf

GENERATE = {"conditions": ["control"], "n_cells": 30, "covariates": {"cell_type": "type_0"}, "seed": 3}


@pytest.fixture
def small(screen):
    _, _, _, train = screen
    data = train[:800].copy()
    model = cf.CellFlow(data, latent_dim=4, backbone_kwargs={"hidden_dim": 16, "n_blocks": 1}, seed=4)
    model.train(vae_epochs=3, flow_steps=20, reflow_rounds=0, progress_bar=False, accelerator="cpu")
    return model, data


def _continue(model):
    model.train_flow(steps=15, progress_bar=False, accelerator="cpu")
    after_training = cf.tl.generate(model, **GENERATE).obsm["X_cellflow"]
    model.reflow(steps=10, pairs_per_group=8, ode_steps=2, distill_steps=2, progress_bar=False, accelerator="cpu")
    return after_training, cf.tl.generate(model, **GENERATE).obsm["X_cellflow"]


def test_loaded_model_continues_training_and_reflows_like_the_one_in_memory(small, tmp_path):
    model, data = small
    model.save(tmp_path / "m")
    loaded = cf.CellFlow.load(tmp_path / "m", adata=data)
    before = cf.tl.generate(model, **GENERATE).obsm["X_cellflow"]
    trained_here, reflowed_here = _continue(model)
    trained_there, reflowed_there = _continue(loaded)
    np.testing.assert_array_equal(trained_here, trained_there)
    np.testing.assert_array_equal(reflowed_here, reflowed_there)
    assert not np.allclose(before, trained_there)  # it did train further
    # What generation needs to know travels with the weights: the distilled solver is the default after loading.
    loaded.save(tmp_path / "again")
    again = cf.CellFlow.load(tmp_path / "again")
    assert again.module.sampling == loaded.module.sampling
    assert again.module.sampling.solver() == ("euler", 2)
    np.testing.assert_array_equal(cf.tl.generate(again, **GENERATE).obsm["X_cellflow"], reflowed_there)


def test_loaded_model_without_data_says_how_to_train_it(small, tmp_path):
    model, data = small
    model.save(tmp_path / "m")
    loaded = cf.CellFlow.load(tmp_path / "m")
    for call in (loaded.train_flow, loaded.reflow):
        with pytest.raises(RuntimeError, match=r"CellFlow.load\(path, adata="):
            call(progress_bar=False)
    with pytest.raises(ValueError, match="genes"):
        cf.CellFlow.load(tmp_path / "m", adata=data[:, ::-1].copy())
