"""score_held_out: how many cells each method predicts."""

from __future__ import annotations

from cellflow.benchmark import AdditiveBaseline, score_held_out


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
