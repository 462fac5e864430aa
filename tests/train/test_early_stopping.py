"""Early stopping of the flow on a validation split of conditions."""

import numpy as np
import pytest
import torch

import cellflow as cf
from cellflow.train._validation import split_validation_conditions


def test_validation_split_holds_out_whole_perturbed_conditions():
    # Groups: condition 0 (control) in two contexts, conditions 1-4 in two contexts each.
    group_condition = np.repeat(np.arange(5), 2)
    group_is_control = group_condition == 0
    held = split_validation_conditions(group_condition, group_is_control, 0.5, seed=0)
    held_conditions = set(group_condition[held])
    assert len(held_conditions) == 2 and 0 not in held_conditions
    # Every group of a held-out condition is held out: the flow never sees that condition.
    assert held.sum() == 2 * len(held_conditions)
    # A tiny fraction still holds out one condition, a large one leaves one to train on.
    assert len(set(group_condition[split_validation_conditions(group_condition, group_is_control, 0.01, 0)])) == 1
    assert len(set(group_condition[split_validation_conditions(group_condition, group_is_control, 0.99, 0)])) == 3
    with pytest.raises(ValueError, match="at least 2 perturbed conditions"):
        split_validation_conditions(np.array([0, 1]), np.array([True, False]), 0.5, seed=0)


SMALL_FLOW = {"cells_per_group": 16, "progress_bar": False, "accelerator": "cpu"}


def test_training_stops_after_patience_checks_without_improvement(vae_model):
    # lr = 0: the validation loss never improves after the first check, so training stops
    # after `patience` more checks instead of running all 2,000 steps.
    vae_model.train_flow(
        steps=2000,
        lr=0.0,
        validation_fraction=0.3,
        patience=2,
        validation_every=10,
        **SMALL_FLOW,
    )
    history = vae_model.history
    assert history["flow_steps"] == 10 * (1 + 2)
    assert history["flow_best_step"] == 10
    assert history["validation_conditions"] and "control" not in history["validation_conditions"]


def test_best_weights_are_restored(vae_model):
    vae_model.train_flow(
        steps=120,
        validation_fraction=0.3,
        patience=100,
        validation_every=20,
        **SMALL_FLOW,
    )
    loss = vae_model.flow_loss()  # on the validation conditions, as the checks computed it
    # The restored weights reproduce the best check's loss, not the last step's.
    assert loss == pytest.approx(vae_model.history["flow_best_val_loss"], rel=1e-4)
    assert 20 <= vae_model.history["flow_best_step"] <= 120


def test_validation_options_are_checked_before_training(screen):
    _, _, _, train = screen
    model = cf.CellFlow(train, latent_dim=4)
    for bad, message in [({"validation_fraction": 1.0}, "validation_fraction=1.0"), ({"patience": 0}, "patience=0")]:
        with pytest.raises(ValueError, match=message):
            model.train(flow_kwargs=bad)
        assert model.vae is None
    # One perturbed condition cannot be split into training and validation: said before the VAE trains.
    labels = train.obs["perturbation"].astype(str)
    one = train[labels.isin(["control", labels[labels != "control"].iloc[0]])].copy()
    cf.pp.setup(one, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    single = cf.CellFlow(one, latent_dim=4)
    with pytest.raises(ValueError, match="at least 2 perturbed conditions"):
        single.train(flow_kwargs={"validation_fraction": 0.2})
    assert single.vae is None


def test_best_weights_keeps_the_best_check_not_the_last():
    from types import SimpleNamespace

    from cellflow.train._validation import BestWeights

    net = torch.nn.Linear(2, 1)
    callback = BestWeights()
    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={}, global_step=0)
    for step, (loss, weight) in enumerate([(3.0, 1.0), (1.0, 2.0), (2.0, 3.0)], start=1):
        net.weight.data.fill_(weight)
        trainer.global_step, trainer.callback_metrics = 10 * step, {"val_loss": torch.tensor(loss)}
        callback.on_validation_end(trainer, net)
    callback.on_fit_end(trainer, net)
    assert torch.all(net.weight == 2.0)
    assert (callback.best_loss, callback.best_step) == (1.0, 20)
