"""The flow's coupling option: fixed population-OT partners by default, minibatch OT or random on request."""

import pytest
import torch

SMALL = {"steps": 3, "cells_per_group": 16, "progress_bar": False, "accelerator": "cpu"}


def test_default_pairs_every_target_with_a_fixed_control_cell_of_its_context(vae_model):
    vae_model.train_flow(**SMALL)
    module, index, config = vae_model._flow_state
    partners = module.source_partner
    assert partners is not None
    for group in range(len(index.size)):
        cells = index.order[index.start[group] : index.start[group] + index.size[group]]
        ctx = int(index.group_context[group])
        controls = index.source_order[index.source_start[ctx] : index.source_start[ctx] + index.source_size[ctx]]
        # Every target's partner is a control cell of the same context.
        assert torch.isin(partners[cells], controls).all()
    # A minibatch pairs each target with its partner, the same at every draw.
    groups = torch.arange(len(index.size))
    for seed in (0, 1):
        target, source, batch_group = index.sample(groups, 8, torch.Generator().manual_seed(seed))
        z0, _, _ = module.pairs((target, source, batch_group))
        assert torch.equal(z0, module.latent[partners[target]])


def test_minibatch_ot_and_random_re_pair_every_step(vae_model):
    for coupling in ("minibatch_ot", "random"):
        vae_model.train_flow(coupling=coupling, **SMALL)
        module, _, _ = vae_model._flow_state
        assert module.source_partner is None


def test_unknown_coupling_is_refused_before_training(vae_model):
    with pytest.raises(ValueError, match="coupling='sinkhorn' must be one of"):
        vae_model.train_flow(coupling="sinkhorn", **SMALL)
