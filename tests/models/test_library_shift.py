"""Generated cells have the library sizes their condition has in training, not the control cells'.

A perturbation that changes how many counts a cell yields (here: every cell carrying one gene's
perturbation thinned to 40% of its counts, its composition kept) must come out of
``cf.tl.generate`` and ``cf.tl.predict`` with 40% of the control cells' counts, and an unseen
combination with the product of its singles' ratios; a measured combination with its own change;
and a condition sequenced only in a deeper VAE batch with no change at all.
"""

import numpy as np
import pytest

import cellflow as cf

KEEP = 0.4  # fraction of counts kept in every cell perturbed in THINNED
THINNED = "G0001"
HELD_OUT = "G0001+G0014"
COMBINATION = "G0014+G0026"  # measured in training; only its own cells are thinned, to COMBINATION_KEEP
COMBINATION_KEEP = 0.5


def _totals(adata) -> np.ndarray:
    return np.asarray(adata.X.sum(axis=1)).ravel()


def _screen():
    return cf.datasets.simulate_perturbseq(
        n_cells=1500, n_genes=40, n_cell_types=1, n_perturbations=4, n_combinations=3, seed=5
    )


def _thin(adata, rows: np.ndarray, keep: float, seed: int = 0) -> None:
    """Keep a fraction of the counts of the given cells (binomial thinning: their composition is kept)."""
    counts = adata.X.toarray()
    counts[rows] = np.random.default_rng(seed).binomial(counts[rows].astype(np.int64), keep)
    adata.X = type(adata.X)(counts)


@pytest.fixture(scope="module")
def thinned():
    """A simulated screen whose THINNED cells keep KEEP of their counts (binomial thinning), HELD_OUT held out."""
    adata = _screen()
    labels = adata.obs["perturbation"].astype(str)
    _thin(adata, labels.str.split("+").apply(lambda tokens: THINNED in tokens).to_numpy(), KEEP)
    _thin(adata, (labels == COMBINATION).to_numpy(), COMBINATION_KEEP, seed=1)
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
    measured = {c: _mean_log_total(train, c) - _mean_log_total(train, "control") for c in ("G0001", "G0014", "G0026")}
    measured[COMBINATION] = _mean_log_total(train, COMBINATION) - _mean_log_total(train, "control")
    assert measured["G0001"] == pytest.approx(np.log(KEEP), abs=0.15)  # the thinning, as the data show it
    # The measured combination is thinned, its singles are not: its own change, not their sum.
    assert measured[COMBINATION] - measured["G0014"] - measured["G0026"] == pytest.approx(np.log(0.5), abs=0.15)
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


def test_a_deeper_batch_does_not_read_as_a_perturbation_that_raises_counts():
    """With batch_key, the library shift is measured against the control cells of each cell's own batch."""
    adata = _screen()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    # G0028 cells all in the deep batch; every other condition (controls included) split between both.
    deep = (labels == "G0028") | (np.arange(adata.n_obs) % 2 == 0)
    adata.obs["batch"] = np.where(deep, "deep", "shallow")
    _thin(adata, ~deep, 0.5)  # the shallow batch was sequenced at half the depth
    cf.pp.setup(adata, perturbation_key="perturbation", control="control")
    pooled = _mean_log_total(adata, "G0028") - _mean_log_total(adata, "control")
    assert pooled == pytest.approx(np.log(2) / 2, abs=0.15)  # what a shift pooled over batches would read
    small = {"hidden_dim": 32, "n_blocks": 1}
    model = cf.CellFlow(adata, latent_dim=8, batch_key="batch", backbone_kwargs=small, seed=0)
    model.train(vae_epochs=3, flow_steps=20, reflow_rounds=0, progress_bar=False, accelerator="cpu")
    condition = cf.pp._conditions.parse_condition("G0028", control="control", sep="+")
    ids, doses, mask = model.codec.encode_conditions([condition])
    shift = model.module.library_shifts(ids, doses, mask, model.module.reference.context.new_zeros(1))
    assert abs(float(shift[0, 0])) < 0.1
