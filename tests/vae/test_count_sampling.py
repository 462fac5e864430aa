"""Count sampling from the VAE's likelihoods: the right distribution, reproducible whatever the thread count."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cellflow.vae._sampling import SAMPLING_CHUNK_ROWS, sample_counts


def _draw(params, seed=0, threads=1, sparse=False):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return sample_counts(params, torch.Generator().manual_seed(seed), sparse=sparse)
    finally:
        torch.set_num_threads(previous)


def test_same_seed_same_counts_whatever_the_thread_count():
    rng = np.random.default_rng(0)
    n = 3 * SAMPLING_CHUNK_ROWS + 17  # several blocks and a short last one
    params = {
        "mu": rng.gamma(0.5, 2.0, size=(n, 7)).astype(np.float32),
        "theta": np.full((n, 7), 1.5, dtype=np.float32),
    }
    one, two = _draw(params, threads=1), _draw(params, threads=2)
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, _draw(params, seed=1))
    assert one.dtype == np.float32 and np.all(one == np.round(one)) and one.min() >= 0


@pytest.mark.parametrize("likelihood", ["poisson", "nb", "zinb"])
def test_sparse_draw_holds_the_same_counts_as_the_dense_one(likelihood):
    rng = np.random.default_rng(1)
    n = 2 * SAMPLING_CHUNK_ROWS + 5
    params = {"mu": rng.gamma(0.3, 1.0, size=(n, 9)).astype(np.float32)}
    params["mu"][3] = 0.0  # an all-zero row keeps its place
    if likelihood != "poisson":
        params["theta"] = np.full((n, 9), 0.8, dtype=np.float32)
    if likelihood == "zinb":
        params["zi_logits"] = np.full((n, 9), -1.0, dtype=np.float32)
    dense = _draw(params, threads=1)
    sparse = _draw(params, threads=2, sparse=True)
    assert sp.isspmatrix_csr(sparse) and sparse.dtype == np.float32 and sparse.has_canonical_format
    np.testing.assert_array_equal(sparse.toarray(), dense)
    assert 0 < sparse.nnz < dense.size and sparse[3].nnz == 0


def test_negative_binomial_moments():
    # NB(mu, theta): mean mu, variance mu + mu^2 / theta (known answer).
    mu, theta = 3.0, 2.0
    params = {"mu": np.full((40_000, 5), mu, np.float32), "theta": np.full((40_000, 5), theta, np.float32)}
    x = _draw(params, threads=2)
    assert x.mean() == pytest.approx(mu, rel=0.01)
    assert x.var() == pytest.approx(mu + mu**2 / theta, rel=0.02)


def test_zero_inflated_and_poisson():
    mu, theta, pi = 4.0, 3.0, 0.25
    shape = (40_000, 5)
    zinb = _draw(
        {
            "mu": np.full(shape, mu, np.float32),
            "theta": np.full(shape, theta, np.float32),
            "zi_logits": np.full(shape, np.log(pi / (1 - pi)), np.float32),
        }
    )
    expected_zeros = pi + (1 - pi) * (theta / (theta + mu)) ** theta
    assert (zinb == 0).mean() == pytest.approx(expected_zeros, abs=0.005)
    assert zinb.mean() == pytest.approx((1 - pi) * mu, rel=0.01)
    poisson = _draw({"mu": np.full(shape, mu, np.float32)})
    assert poisson.mean() == pytest.approx(mu, rel=0.01) and poisson.var() == pytest.approx(mu, rel=0.02)


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson", "normal"])
def test_decode_sparse_is_the_same_draw_as_dense(likelihood):
    # generate() decodes with sparse=True; the AnnData it returns must hold what decode() draws.
    from cellflow.vae import LatentVAE, VAEConfig

    torch.manual_seed(0)
    config = VAEConfig(n_input=12, n_latent=3, n_hidden=8, gene_likelihood=likelihood)
    vae = LatentVAE(config.build(), config)
    z, log_library = torch.randn(SAMPLING_CHUNK_ROWS + 9, 3), torch.full((SAMPLING_CHUNK_ROWS + 9, 1), 4.0)
    for sample in (True, False):
        dense = vae.decode(z, log_library, sample=sample, generator=torch.Generator().manual_seed(3))
        sparse = vae.decode(z, log_library, sample=sample, generator=torch.Generator().manual_seed(3), sparse=True)
        assert sp.isspmatrix_csr(sparse) and sparse.dtype == np.float32
        np.testing.assert_array_equal(sparse.toarray(), dense.numpy().astype(np.float32))
