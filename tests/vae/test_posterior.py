"""Draws from the VAE's posterior: scvi-tools' posterior predictive starts there, not at the posterior mean."""

import numpy as np
import torch


def _posterior(vae, counts):
    x = torch.as_tensor(np.asarray(counts, dtype=np.float32))
    with torch.no_grad():
        qz = vae.module.inference(x, torch.zeros(len(x), 1, dtype=torch.long))["qz"]
    return qz.loc.numpy(), qz.scale.numpy()


def test_posterior_draws_have_the_posteriors_mean_and_spread(screen, trained):
    _, _, _, train = screen
    counts = np.asarray(train.X[:12].todense() if hasattr(train.X, "todense") else train.X[:12])
    repeats = 500
    z, _ = trained.vae.sample_posterior(np.tile(counts, (repeats, 1)), generator=torch.Generator().manual_seed(0))
    draws = z.numpy().reshape(repeats, len(counts), -1)
    loc, scale = _posterior(trained.vae, counts)
    np.testing.assert_allclose(loc, trained.vae.encode(counts), rtol=1e-5, atol=1e-6)  # encode is the mean
    # Mean of 500 draws within 5 standard errors of the posterior mean; their sd within 15% of its scale.
    assert np.all(np.abs(draws.mean(axis=0) - loc) < 5 * scale / np.sqrt(repeats))
    np.testing.assert_allclose(draws.std(axis=0), scale, rtol=0.15)


def test_posterior_draws_follow_the_generator_and_keep_the_library_sizes(screen, trained):
    _, _, _, train = screen
    counts = train.X[:40]
    first, log_library = trained.vae.sample_posterior(counts, generator=torch.Generator().manual_seed(1))
    again, _ = trained.vae.sample_posterior(counts, generator=torch.Generator().manual_seed(1))
    other, _ = trained.vae.sample_posterior(counts, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    assert first.shape == (40, trained.vae.config.n_latent) and first.dtype == torch.float32
    _, expected = trained.vae.encode_with_library(counts)
    np.testing.assert_allclose(log_library.numpy(), expected, rtol=1e-6)
    empty, no_library = trained.vae.sample_posterior(counts[:0])
    assert empty.shape == (0, trained.vae.config.n_latent) and no_library.shape == (0,)
