"""score_held_out (how many cells each method predicts) and score_reconstruction."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cellflow.evaluation import (
    AdditiveBaseline,
    ConditionScorer,
    conditions_frame,
    score_held_out,
    score_reconstruction,
)
from cellflow.evaluation._harness import _reconstruct, draw_seed
from cellflow.metrics import log_normalize
from cellflow.tl._generate import block_seed


def test_predicted_cells_default_to_the_real_count_and_can_be_set(screen):
    adata, frame, split, train = screen
    held_out = sorted(split.held_out)
    baselines = [AdditiveBaseline().fit(train)]
    kwargs = {"baselines": baselines, "covariate_keys": ["cell_type"], "seed": 0}
    matched = score_held_out(adata, frame, held_out, **kwargs)
    fixed = score_held_out(adata, frame, held_out, n_cells=300, **kwargs)
    for rows, expected in [(matched, None), (fixed, 300)]:
        additive = rows[rows["method"] == "additive"]
        assert len(additive) == 2 * len(held_out)  # every held-out condition in both cell types
        want = additive["n_cells"] if expected is None else expected
        assert (additive["n_predicted"] == want).all()
    # The noise floor always splits the real cells, whatever the predictions' size.
    assert fixed.loc[fixed["method"] == "noise_floor", "n_cells"].equals(
        matched.loc[matched["method"] == "noise_floor", "n_cells"]
    )


def test_score_reconstruction_keeps_the_effects_the_control_cells_lack(screen, trained):
    _, _, _, train = screen
    frame = conditions_frame(train)
    rows = score_reconstruction(trained, train, frame, covariate_keys=["cell_type"], seed=0)
    contexts = frame[frame["condition"] != "control"].drop_duplicates()
    ours = rows[rows["method"] == "vae_reconstruction"]
    assert len(ours) == len(contexts) == (rows["method"] == "noise_floor").sum()
    # Baseline it must beat: the context's control cells offered as the reconstruction.
    real = log_normalize(train.X)
    scorer = ConditionScorer(real)
    control_energy = []
    for row in ours.itertuples():
        in_context = frame["cell_type"].to_numpy() == row.cell_type
        truth = real[(frame["condition"].to_numpy() == row.condition) & in_context]
        control = real[(frame["condition"].to_numpy() == "control") & in_context]
        control_energy.append(scorer.score(control, truth, control)["energy_distance"])
    assert ours["energy_distance"].mean() < 0.5 * np.mean(control_energy)
    assert ours["pearson_delta_top20"].mean() > 0.5
    with pytest.raises(ValueError, match="batch_key"):
        score_reconstruction(SimpleNamespace(config=SimpleNamespace(batch_key="batch")), train, frame)


def test_scorer_adds_the_virtual_cell_challenge_metrics():
    rng = np.random.default_rng(0)
    control = np.log1p(rng.poisson(5.0, (40, 12)).astype(float))
    truth = np.log1p(rng.poisson(np.r_[[20.0] * 3, [5.0] * 9], (40, 12)).astype(float))
    scorer = ConditionScorer(np.vstack([control, truth]), top_k=5, gene_names=[f"g{i}" for i in range(12)])
    perfect, unchanged = scorer.score(truth, truth, control), scorer.score(control, truth, control)
    assert perfect["mae"] == 0.0 and perfect["overlap_at_N"] == 1.0
    assert unchanged["overlap_at_N"] == 0.0
    assert unchanged["mae"] == pytest.approx(np.abs(control.mean(0) - truth.mean(0)).mean())
    assert np.isnan(scorer.score(truth - 3.0, truth, control)["overlap_at_N"])  # not log-normalised
    # Discrimination leaves out the gene named like the condition: "g0" is predicted without its own
    # (large) change in g0, and would otherwise look closer to "g1".
    true_changes = np.array([[5.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    pred_changes = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    three = ConditionScorer(rng.normal(size=(10, 3)), gene_names=["g0", "g1", "g2"])
    np.testing.assert_array_equal(three.discrimination(["g0", "g1"], pred_changes, true_changes), [1.0, 1.0])
    unnamed = ConditionScorer(rng.normal(size=(10, 3)))
    np.testing.assert_array_equal(unnamed.discrimination(["g0", "g1"], pred_changes, true_changes), [0.5, 1.0])
    with pytest.raises(ValueError, match="gene_names"):
        ConditionScorer(rng.normal(size=(10, 3)), gene_names=["g0"])


def test_distribution_distances_and_the_pca_basis(screen):
    adata, frame, split, train = screen
    held_out = sorted(split.held_out)
    kwargs = {"baselines": [AdditiveBaseline().fit(train)], "covariate_keys": ["cell_type"], "seed": 0}
    default = score_held_out(adata, frame, held_out, **kwargs)
    assert default[["energy_distance_unsquared", "mmd"]].notna().all().all()
    # The basis of all real cells is the default; the training cells give another basis.
    np.testing.assert_allclose(
        score_held_out(adata, frame, held_out, pca_reference=adata.X, **kwargs)["energy_distance"],
        default["energy_distance"],
    )
    on_train = score_held_out(adata, frame, held_out, pca_reference=train.X, **kwargs)
    assert not np.allclose(on_train["energy_distance"], default["energy_distance"])
    np.testing.assert_allclose(on_train["pearson_delta_top20"], default["pearson_delta_top20"])  # basis-free
    # Half of the real cells are closer to the other half than the additive prediction is, on both distances.
    means = on_train.groupby("method")[["energy_distance_unsquared", "mmd"]].mean()
    assert (means.loc["noise_floor"] < means.loc["additive"]).all()


def test_draws_score_independent_predictions_and_the_first_is_the_single_draw(screen):
    adata, frame, split, train = screen
    held_out = sorted(split.held_out)[:2]
    kwargs = {"baselines": [AdditiveBaseline().fit(train)], "covariate_keys": ["cell_type"], "seed": 3}
    single = score_held_out(adata, frame, held_out, **kwargs)
    drawn = score_held_out(adata, frame, held_out, draws=3, **kwargs)
    assert len(drawn) == 3 * len(single)
    assert sorted(drawn["draw"].unique()) == [0, 1, 2]
    # Draw 0 is the run with one draw, row for row.
    first = drawn[drawn["draw"] == 0].reset_index(drop=True)
    np.testing.assert_array_equal(first["energy_distance"], single["energy_distance"])
    # Every draw predicts (and splits the noise floor) anew: no two draws score alike.
    for method in ["additive", "noise_floor"]:
        rows = drawn[drawn["method"] == method].pivot_table(
            index=["condition", "cell_type"], columns="draw", values="energy_distance"
        )
        assert (rows.nunique(axis=1) == 3).all()


def test_draw_seeds_are_distinct_from_each_other_and_from_generate_blocks():
    assert draw_seed(7, 0) == 7
    seeds = [draw_seed(7, d) for d in range(1, 50)]
    assert len(set(seeds)) == len(seeds)
    assert not set(seeds) & {block_seed(7, b) for b in range(50)}
    assert all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize("draws", [0, -1, 1.5, True])
def test_draws_must_be_a_positive_integer(screen, draws):
    adata, frame, split, _ = screen
    with pytest.raises(ValueError, match="draws="):
        score_held_out(adata, frame, sorted(split.held_out), draws=draws)


def test_vae_ceiling_decodes_the_real_cells_as_generation_decodes(screen, trained):
    import torch

    adata, frame, split, _ = screen
    held_out = sorted(split.held_out)[:1]
    rows = score_held_out(adata, frame, held_out, model=trained, covariate_keys=["cell_type"], seed=0, draws=2)
    assert len(rows[rows["method"] == "vae_ceiling"]) == 2 * 2  # both cell types, both draws
    counts = adata.X[frame["condition"].to_numpy() == held_out[0]]
    drawn = _reconstruct(trained, counts, 0)
    np.testing.assert_array_equal(drawn, _reconstruct(trained, counts, 0))  # by seed
    assert not np.array_equal(drawn, _reconstruct(trained, counts, 1))
    # A draw around each posterior mean with its sd, the cells' own library sizes: as decode(latent_scale=...) does.
    latent, scale, log_library = (torch.as_tensor(a, dtype=torch.float32) for a in trained.vae.encode_posterior(counts))
    generator = torch.Generator().manual_seed(0)
    expected = trained.vae.decode(latent, log_library[:, None], generator=generator, latent_scale=scale)
    np.testing.assert_array_equal(drawn, log_normalize(expected.numpy()))
