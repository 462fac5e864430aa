import math

import pytest
import torch

from cellflow.nn import TimestepEmbedder, sinusoidal_features


def test_sinusoidal_features_match_hand_computation():
    # half = 2 frequencies: 1 and 10_000 ** (-1 / 2) = 0.01; angles = 1000 * 0.5 * freq = 500 and 5.
    features = sinusoidal_features(torch.tensor([0.5]), 4, max_period=10_000, scale=1000)
    expected = torch.tensor([[math.cos(500), math.cos(5), math.sin(500), math.sin(5)]])
    torch.testing.assert_close(features, expected)


def test_odd_frequency_dim_pads_with_zero():
    features = sinusoidal_features(torch.rand(3), 5)
    assert features.shape == (3, 5)
    assert torch.equal(features[:, -1], torch.zeros(3))


@pytest.mark.parametrize(("dim", "frequency_dim"), [(8, 256), (5, 17)])
def test_shape(dim, frequency_dim):
    torch.manual_seed(0)
    embedder = TimestepEmbedder(dim, frequency_dim)
    assert embedder(torch.rand(7)).shape == (7, dim)


def test_distinct_times_give_distinct_embeddings():
    torch.manual_seed(0)
    embedder = TimestepEmbedder(16)
    s = torch.linspace(0, 1, 201)  # neighbours 0.005 apart
    embeddings = embedder(s)
    distances = torch.cdist(embeddings, embeddings) + torch.eye(len(s)) * 1e9
    assert distances.min() > 1e-5


def test_deterministic():
    s = torch.rand(10, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    first = TimestepEmbedder(16)
    torch.manual_seed(0)
    second = TimestepEmbedder(16)
    assert torch.equal(first(s), first(s))
    assert torch.equal(first(s), second(s))


def test_rejects_non_vector_time():
    with pytest.raises(ValueError, match="shape"):
        TimestepEmbedder(8)(torch.rand(4, 1))
