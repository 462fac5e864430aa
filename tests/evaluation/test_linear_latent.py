"""LinearBaseline and LatentArithmeticBaseline against hand-computed answers."""

from __future__ import annotations

import types

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import cellflow as cf
from cellflow.evaluation import LatentArithmeticBaseline, LinearBaseline, TrainingMeanBaseline
from cellflow.metrics import log_normalize


def _screen(labels, n_genes=10, seed=0, contexts=None):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(5.0, size=(len(labels), n_genes)).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    keys = []
    if contexts is not None:
        obs["cell_type"], keys = contexts, ["cell_type"]
    adata = ad.AnnData(counts, obs=obs)
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=keys)
    return adata


def _mean_change(adata, label):
    x = log_normalize(adata.X)
    labels = adata.obs["perturbation"].to_numpy()
    return x[labels == label].mean(0) - x[labels == "control"].mean(0)


def test_linear_reproduces_training_changes_at_full_rank():
    # With K = rank of the centred training matrix and no penalty, G W Pᵀ + b is the training matrix itself.
    adata = _screen(["control"] * 20 + ["A"] * 10 + ["B"] * 10 + ["C"] * 10 + ["D"] * 10)
    model = LinearBaseline(n_comps=10, ridge=1e-10).fit(adata)
    for label in "ABCD":
        assert np.allclose(model.predicted_change(label), _mean_change(adata, label), atol=1e-5)


def test_linear_combinations_add_embeddings_and_cells_shift_controls():
    adata = _screen(["control"] * 20 + ["A"] * 10 + ["B"] * 10 + ["C"] * 10 + ["A+C"] * 10)
    model = LinearBaseline(n_comps=2).fit(adata)
    b = model.offset
    combined = model.predicted_change("B+A") - b
    assert np.allclose(combined, (model.predicted_change("A") - b) + (model.predicted_change("B") - b))
    assert np.allclose(model.predicted_change("never_seen"), b)  # no embedding: the mean change
    cells = model.predict("A+B", n_cells=50, seed=1)
    controls = log_normalize(adata.X)[:20]
    assert cells.shape == (50, 10) and cells.min() >= 0
    assert np.all(cells >= np.clip(controls.min(0) + model.predicted_change("A+B"), 0, None) - 1e-9)


def test_linear_uses_the_gene_embedding_for_measured_genes():
    adata = _screen(["control"] * 20 + ["g1"] * 10 + ["g2"] * 10 + ["X"] * 10)
    model = LinearBaseline(n_comps=2).fit(adata)
    assert np.allclose(model.token_embedding["g1"], model.gene_embedding[1])
    # an unseen perturbation of a measured gene is predicted through its gene embedding
    expected = model.gene_embedding @ model.weights @ model.gene_embedding[7] + model.offset
    assert np.allclose(model.predicted_change("g7"), expected)


def test_linear_bad_arguments():
    with pytest.raises(ValueError, match="n_comps"):
        LinearBaseline(n_comps=0)
    with pytest.raises(ValueError, match="perturbed training cells"):
        LinearBaseline().fit(_screen(["control"] * 20))


class _ExpVAE:
    """Stand-in VAE: latent = log1p(counts), decode = exp(latent), so arithmetic is checkable by hand.

    Cell ``i``'s posterior sds are ``0.01 * (i + 1)``; the last decoding's log library sizes and
    latent scales are kept.
    """

    def encode_posterior(self, matrix, batch=None):
        matrix = np.asarray(matrix, dtype=np.float64)
        latent = np.log1p(matrix)
        scale = np.repeat(0.01 * np.arange(1, len(matrix) + 1)[:, None], matrix.shape[1], axis=1)
        return latent, scale, np.log(np.maximum(matrix.sum(axis=1), 1.0))

    def decode(self, z, log_library, batch=None, *, sample=True, generator=None, latent_scale=None, gene_offset=None):
        assert gene_offset is None  # the stub model has no gene offsets
        self.last = {"log_library": log_library.numpy().ravel(), "latent_scale": latent_scale.numpy()}
        return torch.exp(z)


def _stub_model(adata):
    config = types.SimpleNamespace(batch_key=None)
    module = types.SimpleNamespace(gene_offsets=None)  # decoded as the VAE decodes (gene offsets: their own tests)
    return types.SimpleNamespace(
        is_trained=True, genes=list(adata.var_names), vae=_ExpVAE(), config=config, module=module
    )


def test_latent_arithmetic_by_hand():
    labels = ["control"] * 12 + ["A"] * 6 + ["B"] * 6 + ["control"] * 12 + ["A"] * 6
    contexts = ["x"] * 24 + ["y"] * 18
    adata = _screen(labels, contexts=contexts)
    baseline = LatentArithmeticBaseline(_stub_model(adata)).fit(adata)
    z = np.log1p(adata.X.astype(np.float64))
    lab, ctx = np.array(labels), np.array(contexts)

    def shift(token, c):
        return z[(lab == token) & (ctx == c)].mean(0) - z[(lab == "control") & (ctx == c)].mean(0)

    pred = baseline.predict("A+B", covariates={"cell_type": "x"}, n_cells=40, seed=2)
    pick = np.random.default_rng(2).choice(np.flatnonzero((lab == "control") & (ctx == "x")), 40)
    expected = log_normalize(np.exp(z[pick] + shift("A", "x") + shift("B", "x")))
    assert np.allclose(pred, expected, atol=1e-5)
    # Decoded as cellflow decodes: control library sizes moved by the tokens' library shifts, posterior sds.
    log_library = np.log(np.asarray(adata.X, dtype=np.float64).sum(axis=1))[:, None]
    library_shift = sum(
        log_library[(lab == t) & (ctx == "x")].mean() - log_library[(lab == "control") & (ctx == "x")].mean()
        for t in ("A", "B")
    )
    np.testing.assert_allclose(baseline.model.vae.last["log_library"], log_library[pick, 0] + library_shift, rtol=1e-6)
    expected_scale = np.repeat(0.01 * (pick + 1)[:, None], adata.n_vars, axis=1)  # each source cell's own
    np.testing.assert_allclose(baseline.model.vae.last["latent_scale"], expected_scale, rtol=1e-6)
    # B was never measured in y: its shift comes from x (covariate transfer)
    pred_y = baseline.predict("B", covariates={"cell_type": "y"}, n_cells=10, seed=0)
    pick = np.random.default_rng(0).choice(np.flatnonzero((lab == "control") & (ctx == "y")), 10)
    assert np.allclose(pred_y, log_normalize(np.exp(z[pick] + shift("B", "x"))), atol=1e-5)
    baseline.predict("Z", covariates={"cell_type": "x"}, n_cells=5)
    assert baseline.missing_singles == {"Z": ["Z"]}


def test_latent_arithmetic_needs_a_trained_model():
    with pytest.raises(ValueError, match="trained"):
        LatentArithmeticBaseline(types.SimpleNamespace(is_trained=False))


@pytest.mark.slow
def test_latent_arithmetic_with_a_trained_model(trained, screen):
    adata, frame, split, train = screen
    baseline = LatentArithmeticBaseline(trained).fit(train)
    condition = split.held_out[0]
    pred = baseline.predict(condition, covariates={"cell_type": frame["cell_type"].iloc[0]}, n_cells=30)
    assert pred.shape == (30, adata.n_vars) and np.isfinite(pred).all()


def test_training_mean_is_the_average_change_of_the_training_conditions():
    adata = _screen(["control"] * 40 + ["A"] * 20 + ["B"] * 20 + ["A+B"] * 20, seed=3)
    baseline = TrainingMeanBaseline().fit(adata)
    expected = np.mean([_mean_change(adata, label) for label in ("A", "B", "A+B")], axis=0)
    x = log_normalize(adata.X)
    control = x[adata.obs["perturbation"].to_numpy() == "control"]
    # The same prediction for any condition, seen or not: control cells + the average change.
    for condition in ("A", "C", "A+C"):
        cells = baseline.predict(condition, n_cells=4000, seed=1)
        np.testing.assert_allclose(cells.mean(0), np.clip(control + expected, 0, None).mean(0), atol=0.05)
    assert np.array_equal(baseline.predict("A", n_cells=10, seed=2), baseline.predict("C", n_cells=10, seed=2))


def test_training_mean_uses_the_context_and_needs_perturbed_cells():
    labels = ["control"] * 20 + ["A"] * 20 + ["control"] * 20 + ["B"] * 20
    adata = _screen(labels, contexts=["x"] * 40 + ["y"] * 40, seed=4)
    baseline = TrainingMeanBaseline().fit(adata)
    x, obs = log_normalize(adata.X), adata.obs
    in_y = obs["cell_type"].to_numpy() == "y"
    change_y = x[in_y & (obs["perturbation"] == "B").to_numpy()].mean(0) - x[
        in_y & (obs["perturbation"] == "control").to_numpy()
    ].mean(0)
    np.testing.assert_allclose(baseline.mean_change["y"], change_y, atol=1e-6)
    with pytest.raises(ValueError, match="perturbed training cells"):
        TrainingMeanBaseline().fit(_screen(["control"] * 30))
