"""cf.pl.conditions: every token at its place on the principal components of the token embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cellflow as cf
from tests.pl._helpers import collection


def _set_encoder_tokens(model) -> np.ndarray:
    """Each token run through the set encoder as a set of one at dose 1: its (projected) token embedding."""
    n = len(model.codec.tokens)
    ids = torch.arange(n)[:, None]
    with torch.no_grad():
        _, tokens = model.module.encoder.set_encoder(ids, torch.ones(n, 1), torch.ones(n, 1, dtype=torch.bool))
    return tokens[:, 0].double().numpy()


def _distances(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None] - points[None], axis=-1)


def test_every_token_is_a_labelled_point(trained):
    ax = cf.pl.conditions(trained, show=False)
    points = collection(ax, "seen in training").get_offsets()
    assert len(points) == len(trained.codec.tokens)
    texts = {t.get_text(): t.xy for t in ax.texts}
    assert set(texts) == set(trained.codec.tokens)
    for i, token in enumerate(trained.codec.tokens):
        np.testing.assert_allclose(texts[token], points[i])


def test_points_are_the_first_two_principal_components(trained):
    from sklearn.decomposition import PCA

    vectors = _set_encoder_tokens(trained)
    expected = PCA(n_components=2).fit(vectors)
    ax = cf.pl.conditions(trained, show=False)
    points = np.asarray(collection(ax, "seen in training").get_offsets())
    # Components are defined up to sign: compare distances, which do not depend on it.
    np.testing.assert_allclose(_distances(points), _distances(expected.transform(vectors)), atol=1e-4)
    share = f"PC1 ({100 * expected.explained_variance_ratio_[0]:.0f}%)"
    assert ax.get_xlabel() == share


def test_labels_only_the_tokens_asked_for(trained):
    chosen = list(trained.codec.tokens[:2])
    ax = cf.pl.conditions(trained, labels=chosen, show=False)
    assert sorted(t.get_text() for t in ax.texts) == sorted(chosen)
    assert len(cf.pl.conditions(trained, labels=False, show=False).texts) == 0


def test_refuses_bad_input(trained, screen):
    with pytest.raises(ValueError, match="does not have"):
        cf.pl.conditions(trained, labels=["NOT_A_TOKEN"], show=False)
    with pytest.raises(TypeError, match="labels"):
        cf.pl.conditions(trained, labels="G0001", show=False)
    with pytest.raises(TypeError, match="CellFlow"):
        cf.pl.conditions(trained.history, show=False)
    _, _, _, train = screen
    untrained = cf.CellFlow(train, latent_dim=4, seed=0)
    with pytest.raises(ValueError, match="not trained"):
        cf.pl.conditions(untrained, show=False)


def test_tokens_not_seen_in_training_stand_apart(trained_copy):
    """A feature-based embedding knows tokens the training cells never had: they are drawn as a group of their own."""
    from dataclasses import replace

    tokens = list(trained_copy.codec.tokens)
    trained_copy.setup = replace(trained_copy.setup, tokens=tuple(tokens[:-2]))  # as if the last two were unseen
    ax = cf.pl.conditions(trained_copy, show=False)
    assert len(collection(ax, "seen in training").get_offsets()) == len(tokens) - 2
    assert len(collection(ax, "not seen in training").get_offsets()) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seen in training", "not seen in training"]
    assert sorted(t.get_text() for t in ax.texts) == sorted(tokens[:-2])  # by default only the seen are named
    assert len(cf.pl.conditions(trained_copy, labels=True, show=False).texts) == len(tokens)
