"""The VAE's posteriors: generation decodes a draw around each latent, as scvi-tools' posterior predictive does."""

import numpy as np
import torch


def _posterior(vae, counts):
    x = torch.as_tensor(np.asarray(counts, dtype=np.float32))
    with torch.no_grad():
        qz = vae.module.inference(x, torch.zeros(len(x), 1, dtype=torch.long))["qz"]
    return qz.loc.numpy(), qz.scale.numpy()


def test_encode_posterior_gives_each_cells_posterior_mean_and_sd(screen, trained):
    _, _, _, train = screen
    counts = np.asarray(train.X[:30].todense() if hasattr(train.X, "todense") else train.X[:30])
    loc, scale, log_library = trained.vae.encode_posterior(counts, batch_size=7)  # several chunks
    expected_loc, expected_scale = _posterior(trained.vae, counts)
    np.testing.assert_allclose(loc, expected_loc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scale, expected_scale, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_library, np.log(np.maximum(counts.sum(axis=1), 1.0)), rtol=1e-6)
    empty = trained.vae.encode_posterior(counts[:0])
    assert [a.shape for a in empty] == [(0, trained.vae.config.n_latent)] * 2 + [(0,)]


def test_decoding_with_a_latent_scale_decodes_a_draw_around_the_latent(screen, trained):
    _, _, _, train = screen
    z, scale, log_library = (
        torch.as_tensor(a, dtype=torch.float32) for a in trained.vae.encode_posterior(train.X[:50])
    )
    log_library = log_library[:, None]
    drawn = trained.vae.decode(z, log_library, latent_scale=scale, generator=torch.Generator().manual_seed(3))
    # The same as drawing z ~ Normal(z, scale) first with the generator, then the counts from it.
    generator = torch.Generator().manual_seed(3)
    by_hand = trained.vae.decode(
        z + scale * torch.randn(z.shape, generator=generator), log_library, generator=generator
    )
    torch.testing.assert_close(drawn, by_hand)
    # Without sampling, the scale is ignored: the likelihood's mean at z itself.
    torch.testing.assert_close(
        trained.vae.decode(z, log_library, latent_scale=scale, sample=False),
        trained.vae.decode(z, log_library, sample=False),
    )


def test_count_sums_add_up_each_groups_counts_and_decoded_means(screen, trained):
    _, _, _, train = screen
    counts = np.asarray(train.X[:60].todense() if hasattr(train.X, "todense") else train.X[:60], dtype=np.float64)
    posterior = trained.vae.encode_posterior(counts)
    group = np.arange(60) % 4
    observed, expected = trained.vae.count_sums(
        counts, group, 5, posterior, generator=torch.Generator().manual_seed(1), batch_size=7
    )
    for g in range(4):
        np.testing.assert_allclose(observed[g], counts[group == g].sum(axis=0))
    assert not observed[4].any() and not expected[4].any()  # an empty group sums to nothing
    # The expected counts: the decoder's means at one draw around each posterior mean, as decode draws it.
    z, scale, log_library = (torch.as_tensor(a, dtype=torch.float32) for a in posterior)
    drawn = z + scale * torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    means = trained.vae.decode(drawn, log_library[:, None], sample=False).numpy()
    for g in range(4):
        np.testing.assert_allclose(expected[g], means[group == g].sum(axis=0), rtol=1e-4)


def test_a_gene_offset_multiplies_the_expected_counts_and_keeps_their_total(screen, trained):
    _, _, _, train = screen
    z, _, log_library = (torch.as_tensor(a, dtype=torch.float32) for a in trained.vae.encode_posterior(train.X[:20]))
    plain = trained.vae.decode(z, log_library[:, None], sample=False)
    offset = torch.zeros(1, plain.shape[1])
    offset[0, 0] = np.log(3.0)
    moved = trained.vae.decode(z, log_library[:, None], sample=False, gene_offset=offset)
    torch.testing.assert_close(moved.sum(dim=1), plain.sum(dim=1), rtol=1e-5, atol=1e-4)
    ratio = (moved / plain).numpy()
    np.testing.assert_allclose(ratio[:, 0] / ratio[:, 1:].mean(axis=1), 3.0, rtol=1e-4)
    np.testing.assert_allclose(ratio[:, 1:], ratio[:, 1:2].repeat(ratio.shape[1] - 1, axis=1), rtol=1e-4)
