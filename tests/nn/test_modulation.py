import pytest
import torch

from cellflow.nn import AdaLNZero, modulate


def test_modulate_hand_computed():
    x = torch.tensor([[1.0, 2.0]])
    shift = torch.tensor([[0.5, -1.0]])
    scale = torch.tensor([[1.0, -0.5]])
    # [1 * (1 + 1) + 0.5, 2 * (1 - 0.5) - 1]
    assert torch.equal(modulate(x, shift, scale), torch.tensor([[2.5, 0.0]]))


def test_modulate_broadcasts_over_tokens():
    torch.manual_seed(0)
    x, shift, scale = torch.randn(2, 3, 4), torch.randn(2, 4), torch.randn(2, 4)
    out = modulate(x, shift, scale)
    for b in range(2):
        for t in range(3):
            torch.testing.assert_close(out[b, t], x[b, t] * (1 + scale[b]) + shift[b])


@pytest.mark.parametrize("shape", [(5, 4), (5, 3, 4)])
def test_zero_shift_and_scale_is_identity(shape):
    x = torch.randn(shape)
    zeros = torch.zeros(5, 4)
    assert torch.equal(modulate(x, zeros, zeros), x)


def test_modulate_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shift and scale"):
        modulate(torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 3))


def test_adaln_zero_starts_at_zero_and_still_learns():
    torch.manual_seed(0)
    layer = AdaLNZero(cond_dim=6, dim=4, n_chunks=3)
    cond = torch.randn(5, 6)
    chunks = layer(cond)
    assert len(chunks) == 3
    assert all(chunk.shape == (5, 4) and torch.equal(chunk, torch.zeros(5, 4)) for chunk in chunks)
    sum(chunk.sum() for chunk in chunks).backward()
    assert layer.linear.weight.grad.abs().sum() > 0


def test_adaln_zero_rejects_no_chunks():
    with pytest.raises(ValueError, match="n_chunks"):
        AdaLNZero(4, 4, 0)
