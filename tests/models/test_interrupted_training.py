"""Training stages are all or nothing, and data the model would fail on is refused before the VAE trains."""

import os
import signal
from dataclasses import replace

import lightning.pytorch as pl
import numpy as np
import pytest

import cellflow as cf

GENERATE = {"conditions": ["control"], "n_cells": 20, "covariates": {"cell_type": "type_0"}, "seed": 1}
FAST = {"progress_bar": False, "accelerator": "cpu"}


class CtrlC(pl.Callback):
    """Press Ctrl-C (SIGINT to this process) after ``step`` optimizer steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def small(screen):
    _, _, _, train = screen
    data = train[:800].copy()
    model = cf.CellFlow(data, latent_dim=4, backbone_kwargs={"hidden_dim": 16, "n_blocks": 1}, seed=2)
    return model.train(vae_epochs=3, flow_steps=20, reflow_rounds=0, **FAST)


def _state(model):
    return cf.tl.generate(model, **GENERATE).obsm["X_cellflow"], dict(model.history), replace(model.module.sampling)


def test_ctrl_c_during_the_flow_leaves_the_model_as_it_was(small):
    before = _state(small)
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job (nohup ... &)
    with pytest.raises(KeyboardInterrupt):  # not Lightning's sys.exit(1)
        small.train_flow(steps=50, trainer_kwargs={"callbacks": [CtrlC(5)]}, **FAST)
    after = _state(small)
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1:] == after[1:]
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C does again what it did before training
    assert not small.module.training  # evaluation mode: the same seed gives the same cells


def test_ctrl_c_during_reflow_leaves_the_model_unreflowed(small):
    before = _state(small)
    with pytest.raises(KeyboardInterrupt):
        small.reflow(steps=30, pairs_per_group=8, ode_steps=2, trainer_kwargs={"callbacks": [CtrlC(3)]}, **FAST)
    after = _state(small)
    np.testing.assert_array_equal(before[0], after[0])
    assert after[2].reflow_rounds == 0 and before[1:] == after[1:]


def test_a_first_flow_that_fails_leaves_an_untrained_model(screen):
    _, _, _, train = screen
    model = cf.CellFlow(train[:800].copy(), latent_dim=4, backbone_kwargs={"hidden_dim": 16, "n_blocks": 1})
    model.train_vae(epochs=2, **FAST)
    with pytest.raises(KeyboardInterrupt):
        model.train_flow(steps=50, trainer_kwargs={"callbacks": [CtrlC(2)]}, **FAST)
    assert not model.is_trained and model.module.reference is None
    with pytest.raises(RuntimeError, match="not trained yet"):
        cf.tl.generate(model, **GENERATE)


def test_only_control_cells_are_refused_before_training(screen):
    _, _, _, train = screen
    controls = train[train.obs["perturbation"] == "control"].copy()
    cf.pp.setup(controls, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    with pytest.raises(ValueError, match="only control cells"):
        cf.CellFlow(controls)


def test_a_context_without_control_cells_is_refused_before_training(screen):
    _, _, _, train = screen
    labels, cell_type = train.obs["perturbation"].astype(str), train.obs["cell_type"].astype(str)
    data = train[~((labels == "control") & (cell_type == "type_1"))].copy()
    cf.pp.setup(data, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    with pytest.raises(ValueError, match=r"No control cells in context\(s\) \['type_1'\].*source='noise'"):
        cf.CellFlow(data)
    cf.CellFlow(data, source="noise")  # noise needs no control cells


def test_a_new_vae_marks_the_flow_of_the_old_latent_space_untrained(small):
    assert small.is_trained
    small.train_vae(epochs=1, **FAST)
    assert not small.is_trained and small.module.reference is None and small.flow_config is None
    with pytest.raises(RuntimeError, match="not trained yet"):
        cf.tl.generate(small, **GENERATE)


def test_ctrl_c_during_the_vae_keeps_the_trained_model(small):
    before = _state(small)
    vae = small.vae

    class StopVAE(pl.Callback):
        def on_train_epoch_end(self, trainer, *args) -> None:
            os.kill(os.getpid(), signal.SIGINT)

    import scvi

    real_train = scvi.model.SCVI.train

    def train(self, *args, **kwargs):  # scvi-tools' trainer, with a Ctrl-C after its first epoch
        return real_train(self, *args, **{**kwargs, "callbacks": [StopVAE()]})

    scvi.model.SCVI.train = train
    try:
        with pytest.raises(KeyboardInterrupt):
            small.train_vae(epochs=5, **FAST)
    finally:
        scvi.model.SCVI.train = real_train
    assert small.vae is vae and small.is_trained
    np.testing.assert_array_equal(_state(small)[0], before[0])


def test_a_checkpoint_of_another_fit_is_refused_not_resumed(small, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        small.train_flow(steps=120, checkpoint_dir=tmp_path, trainer_kwargs={"callbacks": [CtrlC(60)]}, **FAST)
    assert (tmp_path / "last.ckpt").exists()
    with pytest.raises(ValueError, match="checkpoint of another training run"):
        small.train_flow(steps=200, checkpoint_dir=tmp_path, **FAST)  # other options
    small.train_flow(steps=120, checkpoint_dir=tmp_path, **FAST)  # the same fit resumes and completes
    assert not (tmp_path / "last.ckpt").exists()  # a finished fit leaves no checkpoint to resume by mistake


def test_a_flow_stopped_with_early_stopping_resumes_to_the_same_weights(small, tmp_path):
    options = {"steps": 120, "validation_fraction": 0.3, "validation_every": 20, "patience": 100, **FAST}
    small.save(tmp_path / "start")
    uninterrupted = cf.CellFlow.load(tmp_path / "start", adata=small.adata).train_flow(**options)
    resumed = cf.CellFlow.load(tmp_path / "start", adata=small.adata)
    with pytest.raises(KeyboardInterrupt):
        resumed.train_flow(**options, checkpoint_dir=tmp_path / "ck", trainer_kwargs={"callbacks": [CtrlC(70)]})
    resumed.train_flow(**options, checkpoint_dir=tmp_path / "ck")
    assert resumed.history["flow_best_step"] == uninterrupted.history["flow_best_step"]
    np.testing.assert_array_equal(
        cf.tl.generate(resumed, **GENERATE).obsm["X_cellflow"],
        cf.tl.generate(uninterrupted, **GENERATE).obsm["X_cellflow"],
    )
