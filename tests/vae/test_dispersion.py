"""The VAE's starting gene dispersions: method-of-moments estimates of a negative binomial's theta."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellflow.vae import VAEConfig
from cellflow.vae._dispersion import MAX_LOG_THETA, initial_log_theta
from tests.conftest import fit_small_vae


def negative_binomial_counts(theta: np.ndarray, n_cells: int = 20_000, seed: int = 0) -> np.ndarray:
    """Counts with library sizes varying 10x between cells and gene shares fixed; ``theta`` per gene."""
    rng = np.random.default_rng(seed)
    library = rng.uniform(500, 5000, size=n_cells)
    share = rng.dirichlet(np.ones(theta.size)) * 0.5  # the rest of each library is outside these genes
    mean = library[:, None] * share[None, :]
    return rng.negative_binomial(theta[None, :], theta[None, :] / (theta[None, :] + mean)).astype(np.float32)


def test_the_estimate_recovers_known_dispersions_and_the_poisson_limit():
    # 200 genes, each a small share of the library (as in a screen), four true dispersions
    levels = np.array([0.5, 2.0, 10.0, 50.0])
    counts = negative_binomial_counts(np.r_[np.tile(levels, 50), 1e8], n_cells=10_000)  # the last one: Poisson
    empty = np.zeros((counts.shape[0], 1), dtype=np.float32)
    log_theta = initial_log_theta(np.hstack([counts, empty]))
    by_level = np.median(log_theta[:200].reshape(50, 4), axis=0)
    np.testing.assert_allclose(by_level, np.log(levels), atol=0.35)  # levels lie 1.4 or more apart
    assert log_theta[200] >= np.log(100.0)  # no excess variance: towards the Poisson limit
    assert log_theta[201] == MAX_LOG_THETA  # no counts at all
    assert log_theta.dtype == np.float32


def test_the_estimate_is_the_same_in_chunks_sparse_and_on_disk(tmp_path):
    counts = negative_binomial_counts(np.array([1.0, 5.0, 20.0]), n_cells=3000)
    whole = initial_log_theta(counts)
    np.testing.assert_allclose(initial_log_theta(counts, chunk_rows=7), whole, rtol=1e-5)
    np.testing.assert_allclose(initial_log_theta(sp.csr_matrix(counts), chunk_rows=1000), whole, rtol=1e-5)
    path = tmp_path / "counts.h5ad"
    ad.AnnData(X=sp.csr_matrix(counts)).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    np.testing.assert_allclose(initial_log_theta(backed.X, chunk_rows=512), whole, rtol=1e-5)
    backed.file.close()


@pytest.mark.parametrize("init_dispersion", [True, False])
def test_the_vae_starts_from_the_estimate_when_asked(monkeypatch, init_dispersion):
    counts = negative_binomial_counts(np.array([0.5, 5.0, 50.0] * 4), n_cells=600)
    config = VAEConfig(n_input=12, n_latent=3, n_hidden=8)
    options = {"config": config, "max_epochs": 1, "batch_size": 128, "init_dispersion": init_dispersion}
    _, _, start = fit_small_vae(monkeypatch, sp.csr_matrix(counts), **options)
    estimate = initial_log_theta(counts)
    if init_dispersion:
        np.testing.assert_allclose(start, estimate, rtol=1e-6)
    else:  # scvi-tools' own random start
        assert np.abs(start - estimate).max() > 0.5
