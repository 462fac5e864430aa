"""Time courses end to end: every backbone answers the same calls; mamba predicts whole trajectories."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import cellflow as cf
from cellflow.evaluation import ControlBaseline, conditions_frame, split_combinations
from cellflow.metrics import log_normalize

SMALL = {
    "mlp": {"hidden_dim": 32, "n_blocks": 1},
    "set_attention": {"hidden_dim": 16, "n_blocks": 1, "n_heads": 2},
    "mamba": {"hidden_dim": 16, "n_blocks": 1, "d_state": 4},
}
TRAIN = {"vae_epochs": 3, "flow_steps": 25, "flow_kwargs": {"groups_per_batch": 4, "cells_per_group": 8}}
SETUP = {"perturbation_key": "perturbation", "control": "control", "covariate_keys": ["cell_type"], "time_key": "time"}


def _simulate(n_cells: int, n_timepoints: int, seed: int, **kwargs):
    options = {"n_genes": 30, "n_cell_types": 2, "n_perturbations": 4} | kwargs
    adata = cf.datasets.simulate_perturbseq(n_cells, n_timepoints=n_timepoints, seed=seed, **options)
    cf.pp.setup(adata, **SETUP)
    return adata


@pytest.fixture(scope="module")
def course():
    """A small simulated time course: 2 cell types, 3 time points, 4 singles and 2 doubles."""
    return _simulate(900, 3, seed=1, n_combinations=2)


@pytest.fixture(scope="module")
def models(course):
    """One briefly trained model per backbone, every one through the same calls."""
    trained = {}
    for backbone, kwargs in SMALL.items():
        model = cf.CellFlow(course, backbone=backbone, latent_dim=6, cond_dim=16, backbone_kwargs=kwargs, seed=0)
        trained[backbone] = model.train(**TRAIN, progress_bar=False, accelerator="cpu")
    return trained


@pytest.mark.parametrize("backbone", list(SMALL))
def test_every_backbone_answers_the_same_generate_call(models, course, backbone):
    model = models[backbone]
    times = [float(t) for t in sorted(course.obs["time"].unique())[::-2]]  # latest first: kept in the order asked
    combo = next(c for c in model.codec.tokens if c) + "+" + model.codec.tokens[-1]
    pred = cf.tl.generate(
        model, conditions=["control", combo], times=times, n_cells=12, covariates={"cell_type": "type_1"}, seed=3
    )
    assert pred.shape == (2 * len(times) * 12, course.n_vars)
    assert list(pred.var_names) == list(course.var_names)
    values = pred.X.data
    assert np.all(values >= 0) and np.array_equal(values, np.round(values))
    expected_times = np.tile(np.repeat(times, 12), 2)
    np.testing.assert_array_equal(pred.obs["time"].to_numpy(), expected_times)
    assert pred.obs["perturbation"].astype(str).tolist() == ["control"] * 24 + [combo] * 24
    assert set(pred.obs["cell_type"]) == {"type_1"} and pred.obs_names.is_unique
    assert pred.uns["cellflow_generate"]["backbone"] == backbone
    if backbone == "mamba":
        # One id per trajectory: its cells at every requested time point, no id shared across conditions.
        ids = pred.obs["trajectory"].to_numpy()
        assert ids.dtype.kind == "i"
        for condition in ("control", combo):
            rows = pred.obs["perturbation"].astype(str).to_numpy() == condition
            per_time = [sorted(ids[rows & (pred.obs["time"].to_numpy() == t)]) for t in times]
            assert all(p == per_time[0] for p in per_time) and len(set(per_time[0])) == 12
        assert len(set(ids)) == 24
    else:
        assert "trajectory" not in pred.obs.columns  # cells of each time point are generated independently


def test_generated_trajectories_are_chained_control_cells_when_the_flow_stands_still(models, tmp_path):
    """With zero velocity, control trajectories are real control cells of each time point, linked by exact OT."""
    models["mamba"].save(tmp_path / "mamba")
    model = cf.CellFlow.load(tmp_path / "mamba")  # a copy whose flow is stopped below
    final = model.module.backbone.final_layer.linear
    with torch.no_grad():
        final.weight.zero_(), final.bias.zero_()
    times = model.time_points
    pred = cf.tl.generate(
        model, conditions=["control"], times=times, n_cells=15, covariates={"cell_type": "type_0"}, seed=0
    )
    reference = model.module.reference
    context = reference.context_code(("type_0",))
    latent = pred.obsm["X_cellflow"].reshape(len(times), 15, -1)  # (T, n, D), trajectories in the same row order
    for k, t in enumerate(times):
        pool = reference.latent[(reference.context == context) & (reference.time == t)].numpy()
        distance = np.abs(latent[k][:, None] - pool[None]).sum(-1).min(axis=1)
        assert distance.max() < 1e-5  # every state is a control cell measured at that time point
    for k in range(len(times) - 1):  # the chaining between consecutive time points is an optimal assignment
        cost = ((latent[k][:, None] - latent[k + 1][None]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        assert np.isclose(cost[rows, cols].sum(), np.trace(cost), rtol=1e-5)


def test_mamba_save_load_generates_identical_cells(models, tmp_path):
    model = models["mamba"]
    model.save(tmp_path / "mamba")
    loaded = cf.CellFlow.load(tmp_path / "mamba")
    assert loaded.time_points == model.time_points
    kwargs = {"conditions": ["control", model.codec.tokens[1]], "times": model.time_points[1:], "n_cells": 20}
    a = cf.tl.generate(model, seed=5, covariates={"cell_type": "type_0"}, **kwargs)
    b = cf.tl.generate(loaded, seed=5, covariates={"cell_type": "type_0"}, **kwargs)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["X_cellflow"], b.obsm["X_cellflow"])
    np.testing.assert_array_equal(a.obs["trajectory"], b.obs["trajectory"])


def test_use_vae_shares_the_autoencoder(models, course):
    other = cf.CellFlow(course, backbone="mamba", latent_dim=6, cond_dim=16, backbone_kwargs=SMALL["mamba"], seed=1)
    other.use_vae(models["mlp"])
    assert other.vae is models["mlp"].vae
    np.testing.assert_array_equal(other._encoded_cells().latent, models["mlp"]._encoded_cells().latent)
    with pytest.raises(ValueError, match="same latent_dim"):
        cf.CellFlow(course, backbone="mlp", latent_dim=4).use_vae(models["mlp"])


def test_mamba_reflow_keeps_the_generate_contract(course):
    model = cf.CellFlow(course, backbone="mamba", latent_dim=6, cond_dim=16, backbone_kwargs=SMALL["mamba"], seed=2)
    model.train(**TRAIN, reflow_rounds=0, progress_bar=False, accelerator="cpu")
    model.reflow(rounds=1, steps=5, pairs_per_group=6, ode_steps=2, distill_steps=1, progress_bar=False)
    assert model.module.sampling.reflow_rounds == 1 and model.module.sampling.distill_steps == 1
    assert np.isfinite(model.history["reflow_final_loss"])
    pred = cf.tl.generate(
        model, conditions=["control"], times=model.time_points, n_cells=5, covariates={"cell_type": "type_0"}
    )
    assert pred.n_obs == 5 * len(model.time_points) and np.isfinite(pred.obsm["X_cellflow"]).all()


def test_sequence_backbone_needs_a_time_key_before_any_training(course):
    adata = course.copy()
    cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    with pytest.raises(ValueError, match=r"backbone='mamba' models time courses.*time_key"):
        cf.CellFlow(adata, backbone="mamba")


def test_sequence_backbone_names_conditions_missing_a_time_point(course):
    last = course.obs["time"].max()
    drop = (course.obs["perturbation"].astype(str) == "control") & (course.obs["time"] == last)
    drop &= course.obs["cell_type"].astype(str) == "type_1"
    adata = course[~drop.to_numpy()].copy()
    cf.pp.setup(adata, **SETUP)
    with pytest.raises(ValueError, match=r"'control' in \{'cell_type': 'type_1'\}: no cells at \['48'\]"):
        cf.CellFlow(adata, backbone="mamba")
    cf.CellFlow(adata, backbone="mlp")  # time as part of the condition needs no complete time courses


def test_unknown_time_point_lists_the_training_time_points(models):
    with pytest.raises(ValueError, match=r"times \['3'\] are not training time points.*\['2', '9.8', '48'\]"):
        cf.tl.generate(models["mamba"], conditions=["control"], times=[2.0, 3.0], covariates={"cell_type": "type_0"})
    with pytest.raises(ValueError, match="pass times"):
        cf.tl.generate(models["mamba"], conditions=["control"], covariates={"cell_type": "type_0"})


@pytest.mark.slow
def test_mamba_beats_the_control_baseline_at_later_time_points():
    """Held-out combinations (both singles seen) of a 4-point time course: closer to the truth than no change."""
    adata = _simulate(4000, 4, seed=0, n_genes=50, n_perturbations=6, n_combinations=8)
    frame = conditions_frame(adata)
    split = split_combinations(frame, n_combinations=2, seed=0)
    train = adata[split.train_mask].copy()
    cf.pp.setup(train, **SETUP)
    model = cf.CellFlow(train, backbone="mamba", latent_dim=12, backbone_kwargs={"hidden_dim": 64}, seed=0)
    model.train(vae_epochs=60, flow_steps=800, progress_bar=False, accelerator="cpu")
    truth = cf.datasets.true_means(adata)
    times = model.time_points
    ours, baseline = {t: [] for t in times[2:]}, {t: [] for t in times[2:]}
    for t in times[2:]:
        control = ControlBaseline().fit(_at(train, t))
        for condition in split.held_out:
            for cell_type in ("type_0", "type_1"):
                true = np.log1p(1e4 * truth.loc[(condition, cell_type, t)].to_numpy())
                pred = cf.tl.generate(
                    model, conditions=[condition], times=[t], n_cells=300, covariates={"cell_type": cell_type}
                )
                predicted = log_normalize(pred.X)
                ctrl = control.predict(condition, covariates={"cell_type": cell_type}, n_cells=300)
                ours[t].append(_rmse(predicted, true))
                baseline[t].append(_rmse(ctrl, true))
    for t in times[2:]:
        assert np.mean(ours[t]) < 0.8 * np.mean(baseline[t]), (t, ours, baseline)


def _at(adata, t):
    part = adata[adata.obs["time"].to_numpy() == t].copy()
    cf.pp.setup(part, **SETUP)
    return part


def _rmse(pred_log: np.ndarray, true_log_mean: np.ndarray) -> float:
    predicted = np.log1p(np.expm1(pred_log).mean(axis=0))
    return float(np.sqrt(np.mean((predicted - true_log_mean) ** 2)))
