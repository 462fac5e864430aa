"""The flow's coupling option: fixed population-OT partners by default, re-paired every minibatch on request."""

import pytest
import torch

from cellflow.pp._setup import get_setup, setup_conditions
from cellflow.train import FlowTrainingConfig, GroupBatches, build_training_design, training_plan

SMALL = {"steps": 3, "cells_per_group": 16, "progress_bar": False, "accelerator": "cpu"}


def _plan(model, coupling):
    """The training plan ``train_flow`` builds for ``coupling``, on the model's VAE latents."""
    model.train_flow(coupling=coupling, **SMALL)  # gives the module its shifts and reference
    adata = model.adata
    setup = get_setup(adata)
    design = build_training_design(adata, setup, model.codec, setup_conditions(adata, setup))
    latent = torch.as_tensor(model.vae.encode(adata.X))
    config = FlowTrainingConfig(coupling=coupling, cells_per_group=64, groups_per_batch=50)
    plan, index = training_plan(model.module, design, latent, config, seed=0)
    return plan, index, latent, config


def _partners_seen(plan, index, config, n_batches=2):
    """For every target cell drawn in each of ``n_batches`` training minibatches: the source it was paired with."""
    stream = iter(GroupBatches(index, torch.arange(index.n_groups), config, seed=0))
    seen = []
    for _ in range(n_batches):
        target, source, batch_group = next(stream)
        z0, _, _ = plan.pairs((target, source, batch_group))
        seen.append(dict(zip(target[:, 0].tolist(), map(tuple, z0.tolist()))))
    return seen


def test_default_pairs_every_target_with_a_fixed_control_cell_of_its_context(vae_model):
    plan, index, latent, config = _plan(vae_model, "ot")
    controls = set(map(tuple, latent[index.source_order].tolist()))
    first, second = _partners_seen(plan, index, config)
    both = set(first) & set(second)
    assert len(both) > 20
    # The same target gets the same control partner in every minibatch, and it is a control cell.
    assert all(first[cell] == second[cell] for cell in both)
    assert all(first[cell] in controls for cell in first)
    # ... of the target's own context.
    ctx = index.group_context[torch.arange(index.n_groups)]
    for group in range(index.n_groups):
        cells = index.order[index.start[group] : index.start[group] + index.size[group]]
        pool = index.source_order[
            index.source_start[ctx[group]] : index.source_start[ctx[group]] + index.source_size[ctx[group]]
        ]
        assert torch.isin(plan.source_partner[cells], pool).all()


@pytest.mark.parametrize("coupling", ["minibatch_ot", "random"])
def test_minibatch_ot_and_random_re_pair_every_minibatch(vae_model, coupling):
    plan, index, _, config = _plan(vae_model, coupling)
    assert plan.source_partner is None
    first, second = _partners_seen(plan, index, config)
    both = set(first) & set(second)
    assert len(both) > 20
    changed = sum(first[cell] != second[cell] for cell in both)
    assert changed > 0.5 * len(both), (changed, len(both))


def test_unknown_coupling_is_refused_before_training(vae_model):
    with pytest.raises(ValueError, match="coupling='sinkhorn' must be one of"):
        vae_model.train_flow(coupling="sinkhorn", **SMALL)


def test_fixed_pairs_are_refused_where_they_cannot_mean_fixed_pairs(screen):
    import cellflow as cf

    _, _, _, train = screen
    model = cf.CellFlow(train, latent_dim=4, source="noise")
    with pytest.raises(ValueError, match="coupling='ot'.*source='noise'.*minibatch_ot"):
        model.train(flow_kwargs={"coupling": "ot"}, progress_bar=False)
    assert model.vae is None  # said before the VAE trained
