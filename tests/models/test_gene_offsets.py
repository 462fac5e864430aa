"""Gene offsets: what a condition does to single genes that the VAE's latent does not carry.

A screen in which every cell carrying G0014 has four times the counts of one gene, and every
cell carrying G0026 four times those of another (effects on single genes, outside the
simulator's programmes), learnt by a two-dimensional latent that cannot hold them: with the
offsets, generated cells of the singles and of their unseen combination have the real ratios.
"""

import numpy as np
import pytest
import torch

import cellflow as cf
from cellflow.evaluation._harness import _gene_offset, _reconstruct
from cellflow.evaluation._latent import LatentArithmeticBaseline
from cellflow.pp._conditions import parse_condition
from cellflow.train import PRIOR_STRENGTHS, choose_combination_scale, choose_prior_strength

SPIKES = {"G0014": 3, "G0026": 2}  # token -> gene column whose counts its cells have FOLD times
FOLD = 4
HELD_OUT = "G0014+G0026"


def _spiked_screen():
    adata = cf.datasets.simulate_perturbseq(
        n_cells=1500, n_genes=40, n_cell_types=1, n_perturbations=4, n_combinations=3, seed=5
    )
    counts = adata.X.toarray()
    tokens = adata.obs["perturbation"].astype(str).str.split("+")
    for token, gene in SPIKES.items():
        counts[tokens.apply(lambda t, token=token: token in t).to_numpy(), gene] *= FOLD
    adata.X = type(adata.X)(counts)
    return adata


@pytest.fixture(scope="module")
def spiked():
    adata = _spiked_screen()
    train = adata[adata.obs["perturbation"].astype(str) != HELD_OUT].copy()
    cf.pp.setup(train, perturbation_key="perturbation", control="control")
    model = cf.CellFlow(train, latent_dim=2, backbone_kwargs={"hidden_dim": 64, "n_blocks": 1}, seed=0)
    model.train(vae_epochs=15, flow_steps=150, reflow_rounds=0, progress_bar=False, accelerator="cpu")
    return adata, model


def _offset(model, label: str) -> torch.Tensor:
    ids, doses, mask = model.codec.encode_conditions([parse_condition(label, control="control", sep="+")])
    return model.module.gene_offsets(ids, doses, mask, torch.zeros(1, dtype=torch.long))[0]


def _normalised_mean(adata, label: str, gene: int) -> float:
    cells = adata[adata.obs["perturbation"].astype(str) == label]
    counts = cells.X.toarray()
    return float((counts[:, gene] / counts.sum(axis=1).clip(min=1)).mean())


def test_an_unseen_combination_is_offset_by_the_control_plus_its_tokens_changes(spiked):
    _, model = spiked
    offsets = model.module.gene_offsets
    assert offsets is not None and offsets.prior_strength in PRIOR_STRENGTHS
    assert offsets.shifts.combination_scale == 1.0  # the default adds the changes up
    expected = _offset(model, "G0014") + _offset(model, "G0026") - _offset(model, "control")
    torch.testing.assert_close(_offset(model, HELD_OUT), expected, atol=1e-5, rtol=0)


def test_generated_cells_have_the_real_single_gene_effects(spiked):
    adata, model = spiked
    labels = ["control", "G0014", "G0026", HELD_OUT]
    with_offsets = cf.tl.generate(model, conditions=labels, n_cells=1500, seed=0)
    saved, model.module.gene_offsets = model.module.gene_offsets, None
    try:
        without = cf.tl.generate(model, conditions=labels, n_cells=1500, seed=0)
    finally:
        model.module.gene_offsets = saved
    for label, genes in (("G0014", [3]), ("G0026", [2]), (HELD_OUT, [3, 2])):
        for gene in genes:
            real = _normalised_mean(adata, label, gene) / _normalised_mean(adata, "control", gene)
            ours = _normalised_mean(with_offsets, label, gene) / _normalised_mean(with_offsets, "control", gene)
            plain = _normalised_mean(without, label, gene) / _normalised_mean(without, "control", gene)
            assert real > 2.5  # the spike, as the data show it
            assert ours == pytest.approx(real, rel=0.25), (label, gene, ours, plain, real)
            assert abs(ours - real) < abs(plain - real), (label, gene, ours, plain, real)


def test_latent_arithmetic_and_the_vae_ceiling_decode_with_the_offsets(spiked):
    """Both references of the benchmark decode as the model does, so they too have the real single-gene effects."""
    adata, model = spiked
    train = adata[adata.obs["perturbation"].astype(str) != HELD_OUT].copy()
    cf.pp.setup(train, perturbation_key="perturbation", control="control")
    arithmetic = LatentArithmeticBaseline(model).fit(train)
    assert arithmetic.gene_offsets is not None
    held_out = adata[adata.obs["perturbation"].astype(str) == HELD_OUT]
    predictions = {
        "latent_arithmetic": arithmetic.predict(HELD_OUT, n_cells=1500, seed=0),
        "vae_ceiling": _reconstruct(model, held_out.X, 0, _gene_offset(model, HELD_OUT, {})),
        "vae_ceiling_without_offsets": _reconstruct(model, held_out.X, 0),
    }
    controls = cf.metrics.log_normalize(adata[adata.obs["perturbation"].astype(str) == "control"].X)
    real = cf.metrics.log_normalize(held_out.X)
    gene = SPIKES["G0014"]

    def ratio(log_normalised):  # normalised mean of the gene against the real control cells'
        return np.expm1(log_normalised[:, gene]).mean() / np.expm1(controls[:, gene]).mean()

    for name in ("latent_arithmetic", "vae_ceiling"):
        assert ratio(predictions[name]) == pytest.approx(ratio(real), rel=0.25), name
    without = abs(ratio(predictions["vae_ceiling_without_offsets"]) - ratio(real))
    assert abs(ratio(predictions["vae_ceiling"]) - ratio(real)) < without


def test_gene_offsets_survive_a_checkpoint_and_can_be_turned_off(spiked, tmp_path):
    adata, model = spiked
    model.save(tmp_path / "model")
    loaded = cf.CellFlow.load(tmp_path / "model")
    for name, tensor in model.module.gene_offsets.tensors().items():
        torch.testing.assert_close(loaded.module.gene_offsets.tensors()[name], tensor, atol=0, rtol=0)
    train = adata[adata.obs["perturbation"].astype(str) != HELD_OUT].copy()
    cf.pp.setup(train, perturbation_key="perturbation", control="control")
    off = cf.CellFlow(train, latent_dim=2, gene_offsets=False, seed=0)
    off.train(vae_epochs=1, flow_steps=5, reflow_rounds=0, progress_bar=False, accelerator="cpu")
    assert off.module.gene_offsets is None
    with pytest.raises(ValueError, match="gene_offsets=True corrects expected counts"):
        cf.CellFlow(train, likelihood="normal", gene_offsets=True)


def test_prior_strength_is_strong_without_effects_and_weak_with_large_ones():
    rng = np.random.default_rng(0)
    expected = np.full((20, 2, 300), 5.0)
    assert choose_prior_strength(rng.poisson(expected).astype(float), expected) == max(PRIOR_STRENGTHS)
    factor = np.exp(rng.normal(0.0, 1.0, (20, 1, 300)))
    expected = np.full((20, 2, 300), 2000.0)
    assert choose_prior_strength(rng.poisson(expected * factor).astype(float), expected) <= 3.0


QUIET_GENE = 33  # the gene this screen's perturbations change least (|log fold change| < 0.15)


def _screen_with_a_spike_in_every_perturbed_cell(combined: str):
    """Every perturbed cell has FOLD times a quiet gene's counts per token ("additive") or once for any ("shared")."""
    adata = cf.datasets.simulate_perturbseq(
        n_cells=2000, n_genes=40, n_cell_types=1, n_perturbations=4, n_combinations=5, seed=5
    )
    counts = adata.X.toarray()
    labels = adata.obs["perturbation"].astype(str)
    n_tokens = np.where(labels == "control", 0, labels.str.count(r"\+") + 1)
    counts[:, QUIET_GENE] *= float(FOLD) ** (n_tokens if combined == "additive" else np.minimum(n_tokens, 1))
    adata.X = type(adata.X)(counts)
    return adata


def _fitted_on_all_but_one_double(adata, combination_offsets: str):
    held_out = sorted(label for label in adata.obs["perturbation"].astype(str).unique() if "+" in label)[0]
    train = adata[adata.obs["perturbation"].astype(str) != held_out].copy()
    cf.pp.setup(train, perturbation_key="perturbation", control="control")
    model = cf.CellFlow(
        train,
        latent_dim=2,
        backbone_kwargs={"hidden_dim": 64, "n_blocks": 1},
        combination_offsets=combination_offsets,
        seed=0,
    )
    model.train(vae_epochs=15, flow_steps=150, reflow_rounds=0, progress_bar=False, accelerator="cpu")
    return model, held_out


@pytest.mark.parametrize(("combined", "scale"), [("shared", 0.5), ("additive", 1.0)])
def test_the_training_combinations_choose_how_an_unseen_ones_offsets_add_up(combined, scale, tmp_path):
    """Four training doubles of measured singles show whether single-gene effects add up; the fifth follows."""
    adata = _screen_with_a_spike_in_every_perturbed_cell(combined)
    model, held_out = _fitted_on_all_but_one_double(adata, "fit")
    assert model.history["gene_offset_combination_scale"] == scale
    first, second = held_out.split("+")
    changes = _offset(model, first) + _offset(model, second) - 2 * _offset(model, "control")
    torch.testing.assert_close(_offset(model, held_out), _offset(model, "control") + scale * changes, atol=1e-5, rtol=0)
    generated = cf.tl.generate(model, conditions=["control", held_out], n_cells=1500, seed=0)
    real = _normalised_mean(adata, held_out, QUIET_GENE) / _normalised_mean(adata, "control", QUIET_GENE)
    ours = _normalised_mean(generated, held_out, QUIET_GENE) / _normalised_mean(generated, "control", QUIET_GENE)
    assert real > (10 if combined == "additive" else 3) and real < (FOLD**2 if combined == "additive" else FOLD + 1)
    assert ours == pytest.approx(real, rel=0.25), (ours, real)
    model.save(tmp_path / "model")
    loaded = cf.CellFlow.load(tmp_path / "model")
    assert loaded.module.gene_offsets.shifts.combination_scale == scale
    assert loaded.config.combination_offsets == "fit"


def test_by_default_an_unseen_combination_adds_its_tokens_changes_up():
    adata = _screen_with_a_spike_in_every_perturbed_cell("shared")
    model, held_out = _fitted_on_all_but_one_double(adata, "sum")
    assert model.history["gene_offset_combination_scale"] == 1.0
    first, second = held_out.split("+")
    changes = _offset(model, first) + _offset(model, second) - 2 * _offset(model, "control")
    torch.testing.assert_close(_offset(model, held_out), _offset(model, "control") + changes, atol=1e-5, rtol=0)
    cf.pp.setup(adata, perturbation_key="perturbation", control="control")
    with pytest.raises(ValueError, match="combination_offsets='mean' must be one of"):
        cf.CellFlow(adata, combination_offsets="mean")
    with pytest.raises(ValueError, match="but gene_offsets is off"):
        cf.CellFlow(adata, gene_offsets=False, combination_offsets="fit")


def test_combination_scale_is_the_factor_the_combinations_counts_show(monkeypatch):
    rng = np.random.default_rng(0)
    expected = np.full((6, 300), 500.0)
    control, summed = rng.normal(0.0, 0.1, (6, 300)), rng.normal(0.0, 1.0, (6, 300))
    for truth in (0.0, 0.5, 1.0, 1.5):
        observed = rng.poisson(expected * np.exp(control + truth * summed)).astype(float)
        assert choose_combination_scale(observed, expected, control, summed) == truth
    assert choose_combination_scale(observed[:2], expected[:2], control[:2], summed[:2]) == 1.0  # too few
    assert choose_combination_scale(observed, expected, control, np.zeros_like(summed)) == 1.0  # nothing to scale
    monkeypatch.setattr("cellflow.train._gene_offsets.SCORE_CHUNK", 4)  # scored in blocks: the same choice
    assert choose_combination_scale(observed, expected, control, summed) == truth
