import math
import time

import pytest
import torch

from cellflow.backbones import EncodedCondition, available_backbones, get_backbone
from cellflow.backbones._mlp import MLPBackbone

DIM, COND_DIM = 3, 4


def condition(vector):
    batch = vector.shape[0]
    return EncodedCondition(vector, torch.zeros(batch, 0, COND_DIM), torch.zeros(batch, 0, dtype=torch.bool))


def test_registered_name_resolves():
    assert get_backbone("mlp") is MLPBackbone
    assert "mlp" in available_backbones()


def test_initial_velocity_is_zero_and_the_last_layer_gets_gradients():
    torch.manual_seed(0)
    net = MLPBackbone(DIM, COND_DIM, hidden_dim=16, n_blocks=2)
    z, s, cond = torch.randn(5, DIM), torch.rand(5), condition(torch.randn(5, COND_DIM))
    velocity = net(z, s, cond)
    assert velocity.shape == (5, DIM)
    assert torch.equal(velocity, torch.zeros(5, DIM))
    (velocity - torch.randn(5, DIM)).square().mean().backward()
    assert net.final_layer.linear.weight.grad.abs().sum() > 0
    assert net.final_layer.linear.bias.grad.abs().sum() > 0


def test_every_block_starts_as_the_identity():
    torch.manual_seed(0)
    net = MLPBackbone(DIM, COND_DIM, hidden_dim=16, n_blocks=3)
    x, c = torch.randn(5, 16), torch.randn(5, 16)
    for block in net.blocks:
        assert torch.equal(block(x, c), x)


def test_scalar_time_equals_expanded_time():
    torch.manual_seed(0)
    net = MLPBackbone(DIM, COND_DIM, hidden_dim=16, n_blocks=1)
    for parameter in net.parameters():  # leave the zero initialisation so outputs differ from 0
        torch.nn.init.normal_(parameter, std=0.3)
    z, cond = torch.randn(4, DIM), condition(torch.randn(4, COND_DIM))
    by_scalar = net(z, torch.tensor(0.3), cond)
    torch.testing.assert_close(by_scalar, net(z, torch.full((4,), 0.3), cond))
    assert by_scalar.abs().sum() > 0


def test_bad_inputs_raise():
    net = MLPBackbone(DIM, COND_DIM, hidden_dim=8, n_blocks=1)
    cond = condition(torch.randn(4, COND_DIM))
    with pytest.raises(ValueError, match=r"z of shape \(B, 3\)"):
        net(torch.randn(4, DIM + 1), torch.rand(4), cond)
    with pytest.raises(ValueError, match="s must be"):
        net(torch.randn(4, DIM), torch.rand(3), cond)
    with pytest.raises(ValueError, match="cond.vector"):
        net(torch.randn(4, DIM), torch.rand(4), condition(torch.randn(4, COND_DIM + 1)))
    with pytest.raises(ValueError, match="dropout"):
        MLPBackbone(DIM, COND_DIM, dropout=1.0)


def target_velocity(z, s, means):
    # Depends on the state, the flow time and the condition.
    return means * torch.cos(math.pi * s)[:, None] - s[:, None] * z


@pytest.fixture
def single_thread():
    # Tiny matrices: a second intra-op thread only adds synchronisation, which costs ~10x when
    # other jobs share the machine's cores.
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def test_fits_a_conditional_velocity_field(single_thread):
    torch.manual_seed(0)
    n_conditions = 3
    cond_vectors = torch.randn(n_conditions, COND_DIM)
    means = 2 * torch.randn(n_conditions, DIM)
    net = MLPBackbone(DIM, COND_DIM, hidden_dim=32, n_blocks=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)

    def sample(n, generator=None):
        labels = torch.randint(0, n_conditions, (n,), generator=generator)
        z, s = torch.randn(n, DIM, generator=generator), torch.rand(n, generator=generator)
        return z, s, condition(cond_vectors[labels]), target_velocity(z, s, means[labels])

    z_eval, s_eval, cond_eval, v_eval = sample(1024, torch.Generator().manual_seed(123))

    def eval_loss():
        with torch.no_grad():
            return (net(z_eval, s_eval, cond_eval) - v_eval).square().mean().item()

    initial = eval_loss()
    start = time.perf_counter()
    for _ in range(150):
        z, s, cond, v = sample(64)
        loss = (net(z, s, cond) - v).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    elapsed = time.perf_counter() - start
    final = eval_loss()
    print(f"mlp fit: loss {initial:.4f} -> {final:.5f} ({initial / final:.0f}x) in {elapsed:.2f} s")
    # Wall time is printed, not asserted: other jobs share this machine's two cores.
    assert final < initial / 10
