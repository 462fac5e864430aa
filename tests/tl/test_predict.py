"""cf.tl.predict: the counterfactual of the user's own cells."""

import numpy as np
import pytest

import cellflow as cf


@pytest.fixture(scope="module")
def controls(screen):
    """Control cells of the screen's held-out part: cells the model never saw."""
    adata, _, split, _ = screen
    held = adata[~split.train_mask].copy()
    labels = held.obs["perturbation"].astype(str)
    if (labels == "control").sum() < 20:  # the split holds out perturbations only: take training controls
        held = adata[split.train_mask].copy()
        labels = held.obs["perturbation"].astype(str)
    return held[labels == "control"][:120].copy()


def test_control_cells_carried_to_control_stay_where_they_are(trained, controls):
    """Round trip: the flow of the control condition moves control cells (almost) nowhere."""
    pred = cf.tl.predict(trained, controls, "control", seed=0)
    before, after = pred.obsm["X_cellflow_input"], pred.obsm["X_cellflow"]
    moved = np.linalg.norm(after - before, axis=1).mean()
    spread = np.linalg.norm(before - before.mean(axis=0), axis=1).mean()
    assert moved < 0.25 * spread, (moved, spread)


def test_predicted_cells_follow_the_condition_as_generated_cells_do(trained, controls):
    context = {"cell_type": "type_0"}
    control = cf.tl.generate(trained, conditions=["control"], n_cells=2000, covariates=context).obsm["X_cellflow"]
    effects = {}
    for token in trained.codec.tokens[:8]:
        generated = cf.tl.generate(trained, conditions=[token], n_cells=2000, covariates=context, seed=0)
        effects[token] = generated.obsm["X_cellflow"].mean(axis=0) - control.mean(axis=0)
    token = max(effects, key=lambda t: np.linalg.norm(effects[t]))  # a clear effect to compare
    pred = cf.tl.predict(trained, controls, token, context=context)
    moved = (pred.obsm["X_cellflow"] - pred.obsm["X_cellflow_input"]).mean(axis=0)
    # The same flow: the mean move of the given cells is the condition's effect on generated cells.
    assert np.linalg.norm(moved - effects[token]) < 0.1 * np.linalg.norm(effects[token])


def test_output_is_aligned_to_the_input_and_the_input_is_unchanged(trained, controls):
    before = controls.copy()
    pred = cf.tl.predict(trained, controls, trained.codec.tokens[1], seed=3)
    assert list(pred.obs_names) == list(controls.obs_names)
    assert pred.obs.drop(columns="cellflow_perturbation").equals(controls.obs)
    assert set(pred.obs["cellflow_perturbation"]) == {trained.codec.tokens[1]}
    assert list(pred.var_names) == list(trained.genes) and pred.X.shape == controls.shape
    values = pred.X.data
    assert np.all(values >= 0) and np.array_equal(values, np.round(values))
    assert (controls.X != before.X).nnz == 0 and controls.obs.equals(before.obs) and not controls.obsm


def test_genes_are_matched_by_name_and_missing_ones_refused(trained, controls):
    token = trained.codec.tokens[0]
    pred = cf.tl.predict(trained, controls, token, seed=1)
    shuffled = controls[:, np.random.default_rng(0).permutation(controls.n_vars)].copy()
    again = cf.tl.predict(trained, shuffled, token, seed=1)
    np.testing.assert_array_equal(again.obsm["X_cellflow"], pred.obsm["X_cellflow"])
    assert (again.X != pred.X).nnz == 0  # counts in the model's gene order either way
    with pytest.raises(ValueError, match="lacks 1 of the model's genes"):
        cf.tl.predict(trained, controls[:, 1:].copy(), token)


def test_the_same_seed_gives_the_same_counts(trained, controls):
    token = trained.codec.tokens[0]
    a, b, c = (cf.tl.predict(trained, controls, token, seed=s) for s in (5, 5, 6))
    assert (a.X != b.X).nnz == 0 and (a.X != c.X).nnz > 0
    np.testing.assert_array_equal(a.obsm["X_cellflow"], c.obsm["X_cellflow"])  # the latents do not depend on it
    mean = cf.tl.predict(trained, controls, token, sample_counts=False)
    assert not np.array_equal(mean.X.data, np.round(mean.X.data))  # expected counts


def test_an_unknown_context_is_named_and_can_borrow_a_known_one(trained, controls):
    other = controls.copy()
    other.obs["cell_type"] = "a_new_cell_line"
    with pytest.raises(ValueError, match=r"a_new_cell_line.*context="):
        cf.tl.predict(trained, other, "control")
    borrowed = cf.tl.predict(trained, other, trained.codec.tokens[0], context={"cell_type": "type_1"})
    assert borrowed.n_obs == other.n_obs and set(borrowed.obs["cell_type"]) == {"a_new_cell_line"}
    with pytest.raises(ValueError, match="conditions"):
        cf.tl.predict(trained, controls, "NOT_A_GENE")
    with pytest.raises(TypeError, match="perturbation"):
        cf.tl.predict(trained, controls, ["control"])
