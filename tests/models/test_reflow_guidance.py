"""Few-step generation (reflow, distillation) and classifier-free guidance."""

import numpy as np
import pytest
import torch

import cellflow as cf


@pytest.fixture(scope="module")
def dropout_model(screen):
    """A small model trained with condition dropout (so it has a null condition), sources unshifted."""
    _, _, _, train = screen
    model = cf.CellFlow(
        train, latent_dim=8, source_shift="none", backbone_kwargs={"hidden_dim": 64, "n_blocks": 2}, seed=1
    )
    model.train(
        vae_epochs=15,
        flow_steps=300,
        reflow_rounds=1,
        flow_kwargs={"condition_dropout": 0.2},
        progress_bar=False,
        accelerator="cpu",
    )
    return model


def _straightness_gap(model, condition, n=200):
    """Mean distance between a 1-step Euler solve and an accurate solve of the same sources, relative to the move."""
    kwargs = {"conditions": [condition], "n_cells": n, "covariates": {"cell_type": "type_0"}, "seed": 0}
    one = cf.tl.generate(model, method="euler", steps=1, **kwargs).obsm["X_cellflow"]
    accurate = cf.tl.generate(model, method="rk4", steps=32, **kwargs).obsm["X_cellflow"]
    # The same seed draws the same control cells first; latent arithmetic alone would put them here:
    reference = model.module.reference
    z0 = reference.sample(reference.context_code(("type_0",)), n, torch.Generator().manual_seed(0)).latent
    start = z0.numpy() + _shift(model, condition)
    return np.linalg.norm(one - accurate, axis=1).mean() / np.linalg.norm(accurate - start, axis=1).mean()


def _shift(model, condition):
    from cellflow.flow import ConditionBatch
    from cellflow.pp import parse_condition

    ids, dose, mask = model.codec.encode_conditions([parse_condition(condition, control="control")])
    cov = model.codec.encode_covariates([{"cell_type": "type_0"}])
    context = torch.tensor([model.module.reference.context_code(("type_0",))])
    batch = ConditionBatch(ids, dose, mask, cov, torch.zeros(1), context)
    shift = model.module.shift(batch)
    return 0.0 if shift is None else shift.numpy()


def test_guidance_one_equals_no_guidance_and_zero_ignores_the_condition(dropout_model):
    kwargs = {"n_cells": 40, "covariates": {"cell_type": "type_0"}, "seed": 3}
    token = dropout_model.codec.tokens[0]
    plain = cf.tl.generate(dropout_model, conditions=[token], **kwargs)
    one = cf.tl.generate(dropout_model, conditions=[token], guidance=1.0, **kwargs)
    np.testing.assert_array_equal(plain.obsm["X_cellflow"], one.obsm["X_cellflow"])
    assert one.uns["cellflow_generate"]["guidance"] == 1.0
    # w = 0: only the null condition drives the flow, so two perturbations give the same cells.
    a = cf.tl.generate(dropout_model, conditions=[dropout_model.codec.tokens[0]], guidance=0.0, **kwargs)
    b = cf.tl.generate(dropout_model, conditions=[dropout_model.codec.tokens[1]], guidance=0.0, **kwargs)
    np.testing.assert_allclose(a.obsm["X_cellflow"], b.obsm["X_cellflow"], atol=1e-5)
    # w = 2 moves further along the conditional direction than w = 1.
    two = cf.tl.generate(dropout_model, conditions=[token], guidance=2.0, **kwargs)
    assert not np.allclose(two.obsm["X_cellflow"], one.obsm["X_cellflow"])


def test_guidance_needs_condition_dropout(screen, trained):
    # A model trained without condition dropout has an untrained null condition.
    _, _, _, train = screen
    model = cf.CellFlow(train[:600].copy(), latent_dim=4, backbone_kwargs={"hidden_dim": 16, "n_blocks": 1})
    model.train(vae_epochs=2, flow_steps=2, reflow_rounds=0, flow_kwargs={"condition_dropout": 0.0}, progress_bar=False)
    assert not model.module.sampling.null_condition
    with pytest.raises(ValueError, match="condition_dropout"):
        cf.tl.generate(model, conditions=["control"], n_cells=5, covariates={"cell_type": "type_0"}, guidance=2.0)
    with pytest.raises(ValueError, match="guidance"):
        cf.tl.generate(trained, conditions=["control"], n_cells=5, covariates={"cell_type": "type_0"}, guidance=-1)


def test_reflow_straightens_the_flow(screen):
    """After reflow and 1-step distillation, one Euler step lands near the accurate solution."""
    _, _, _, train = screen
    model = cf.CellFlow(train, latent_dim=8, backbone_kwargs={"hidden_dim": 64, "n_blocks": 2}, seed=2)
    model.train(vae_epochs=15, flow_steps=300, reflow_rounds=0, progress_bar=False, accelerator="cpu")
    token = next(t for t in model.codec.tokens)
    before = _straightness_gap(model, token)
    model.reflow(rounds=1, steps=300, pairs_per_group=64, distill_steps=1, progress_bar=False, accelerator="cpu")
    after = _straightness_gap(model, token)
    assert after < 0.8 * before, (before, after)
    assert model.module.sampling.reflow_rounds == 1 and model.module.sampling.distill_steps == 1


def test_train_reflows_once_when_asked(trained):
    # conftest's model: model.train(flow_steps=600, reflow_rounds=1) -> one reflow round of 300 steps.
    assert trained.module.sampling.reflow_rounds == 1 and trained.module.sampling.distill_steps == 0
    assert trained.history["reflow_seconds"] > 0


def test_reflow_checks_its_options(trained):
    with pytest.raises(ValueError, match="at least 1"):
        trained.reflow(rounds=0)
    with pytest.raises(ValueError, match="distill_steps"):
        trained.reflow(distill_steps=0)
