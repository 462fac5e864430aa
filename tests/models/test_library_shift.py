"""Generated cells have the library sizes their condition has in training, not the control cells'.

A perturbation that changes how many counts a cell yields (here: every cell carrying one gene's
perturbation thinned to 40% of its counts, its composition kept) must come out of
``cf.tl.generate`` and ``cf.tl.predict`` with 40% of the control cells' counts, and an unseen
combination with the product of its singles' ratios.
"""

import numpy as np
import pytest

import cellflow as cf

KEEP = 0.4  # fraction of counts kept in every cell perturbed in THINNED
THINNED = "G0001"
HELD_OUT = "G0001+G0014"


def _totals(adata) -> np.ndarray:
    return np.asarray(adata.X.sum(axis=1)).ravel()


@pytest.fixture(scope="module")
def thinned():
    """A simulated screen whose THINNED cells keep KEEP of their counts (binomial thinning), HELD_OUT held out."""
    adata = cf.datasets.simulate_perturbseq(
        n_cells=1500, n_genes=40, n_cell_types=1, n_perturbations=4, n_combinations=3, seed=5
    )
    rng = np.random.default_rng(0)
    hit = adata.obs["perturbation"].astype(str).str.split("+").apply(lambda tokens: THINNED in tokens).to_numpy()
    counts = adata.X.toarray()
    counts[hit] = rng.binomial(counts[hit].astype(np.int64), KEEP)
    adata.X = type(adata.X)(counts)
    train = adata[adata.obs["perturbation"].astype(str) != HELD_OUT].copy()
    cf.pp.setup(train, perturbation_key="perturbation", control="control")
    model = cf.CellFlow(train, latent_dim=8, backbone_kwargs={"hidden_dim": 64, "n_blocks": 1}, seed=0)
    model.train(vae_epochs=15, flow_steps=150, reflow_rounds=0, progress_bar=False, accelerator="cpu")
    return adata, train, model


def _mean_log_total(adata, label) -> float:
    cells = adata[adata.obs["perturbation"].astype(str) == label]
    return float(np.log(np.maximum(_totals(cells), 1.0)).mean())


def test_library_shift_is_the_measured_change_and_sums_for_unseen_combinations(thinned):
    _, train, model = thinned
    shifts = model.module.library_shifts
    assert shifts is not None
    measured = {c: _mean_log_total(train, c) - _mean_log_total(train, "control") for c in ("G0001", "G0014")}
    assert measured["G0001"] == pytest.approx(np.log(KEEP), abs=0.15)  # the thinning, as the data show it
    for label, expected in [*measured.items(), (HELD_OUT, measured["G0001"] + measured["G0014"])]:
        condition = cf.pp._conditions.parse_condition(label, control="control", sep="+")
        ids, doses, mask = model.codec.encode_conditions([condition])
        got = shifts(ids, doses, mask, model.module.reference.context.new_zeros(1))
        assert float(got[0, 0]) == pytest.approx(expected, abs=1e-5)


def test_generated_cells_have_their_conditions_library_sizes(thinned):
    adata, _, model = thinned
    generated = cf.tl.generate(model, conditions=["control", "G0001", "G0014", HELD_OUT], n_cells=600, seed=0)
    by_condition = generated.obs["perturbation"].astype(str).to_numpy()
    median = {c: np.median(_totals(generated[by_condition == c])) for c in np.unique(by_condition)}
    real = {c: np.median(_totals(adata[adata.obs["perturbation"].astype(str) == c])) for c in median}
    assert median["control"] == pytest.approx(real["control"], rel=0.1)
    assert median["G0001"] / median["control"] == pytest.approx(KEEP, rel=0.2)
    # The unseen combination: the thinned single's ratio times the other single's (about 1), as in the real cells.
    assert median[HELD_OUT] / median["control"] == pytest.approx(real[HELD_OUT] / real["control"], rel=0.2)
    assert median[HELD_OUT] / median["control"] < 0.6


def test_predicted_counterfactuals_move_each_cells_library_size(thinned):
    adata, _, model = thinned
    controls = adata[adata.obs["perturbation"].astype(str) == "control"].copy()
    predicted = cf.tl.predict(model, controls, "G0001", seed=0)
    ratio = _totals(predicted).sum() / _totals(controls).sum()
    assert ratio == pytest.approx(KEEP, rel=0.2)
