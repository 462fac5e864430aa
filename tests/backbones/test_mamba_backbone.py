import json
import time

import pytest
import torch

import cellflow.backbones._mamba  # noqa: F401  (registers "mamba")
from cellflow.backbones import EncodedCondition, get_backbone
from cellflow.backbones._mamba import MambaBackbone
from cellflow.nn._mamba import Mamba

DIM, COND_DIM, T = 3, 4, 5


def condition(vector):
    batch = vector.shape[0]
    return EncodedCondition(vector, torch.zeros(batch, 0, COND_DIM), torch.zeros(batch, 0, dtype=torch.bool))


def small_net(**options):
    return MambaBackbone(DIM, COND_DIM, **{"hidden_dim": 16, "n_blocks": 2, "d_state": 4, **options})


def randomise_zero_layers(net):
    # Leave the adaLN-Zero initialisation so that outputs (and their dependence on inputs) are not 0.
    torch.manual_seed(1)
    for name, parameter in net.named_parameters():
        if "modulation" in name or "final_layer" in name:
            torch.nn.init.normal_(parameter, std=0.3)


def test_registered_name_resolves_and_declares_a_time_sequence():
    assert get_backbone("mamba") is MambaBackbone
    assert MambaBackbone.over_time is True


@pytest.mark.parametrize("times", [None, torch.linspace(0, 1, T), torch.rand(6, T)])
def test_initial_velocity_is_zero_with_the_state_shape(times):
    torch.manual_seed(0)
    net = small_net()
    z, s, cond = torch.randn(6, T, DIM), torch.rand(6), condition(torch.randn(6, COND_DIM))
    velocity = net(z, s, cond, times)
    assert velocity.shape == (6, T, DIM)
    assert torch.equal(velocity, torch.zeros(6, T, DIM))
    (velocity - torch.randn(6, T, DIM)).square().mean().backward()
    assert net.final_layer.linear.weight.grad.abs().sum() > 0


def test_every_block_starts_as_the_identity():
    torch.manual_seed(0)
    net = small_net(bidirectional=True)
    x, c = torch.randn(4, T, 16), torch.randn(4, 16)
    for block in net.blocks:
        assert torch.equal(block(x, c), x)


def test_shared_times_equal_per_trajectory_times_and_change_the_output():
    torch.manual_seed(0)
    net = small_net()
    randomise_zero_layers(net)
    z, s, cond, times = torch.randn(4, T, DIM), torch.rand(4), condition(torch.randn(4, COND_DIM)), torch.rand(T)
    shared = net(z, s, cond, times)
    torch.testing.assert_close(shared, net(z, s, cond, times.expand(4, T)))
    assert (shared - net(z, s, cond, None)).abs().max() > 1e-4
    torch.testing.assert_close(net(z, torch.tensor(0.3), cond, times), net(z, torch.full((4,), 0.3), cond, times))


def test_velocity_is_causal_in_time_unless_bidirectional():
    torch.manual_seed(0)
    z, s, cond, times = torch.randn(3, 6, DIM), torch.rand(3), condition(torch.randn(3, COND_DIM)), torch.rand(6)
    later_changed = z.clone()
    later_changed[:, 4:] += 1.0
    for bidirectional in (False, True):
        net = small_net(bidirectional=bidirectional)
        randomise_zero_layers(net)
        before, after = net(z, s, cond, times), net(later_changed, s, cond, times)
        earlier_change = (after[:, :4] - before[:, :4]).abs().max()
        if bidirectional:
            assert earlier_change > 1e-4  # the reversed scan carries later time points back
        else:
            assert earlier_change == 0


def test_options_are_json_serialisable_and_set_the_mamba_layers():
    options = {"hidden_dim": 8, "n_blocks": 3, "d_state": 5, "d_conv": 2, "expand": 1, "bidirectional": True}
    net = MambaBackbone(DIM, COND_DIM, **json.loads(json.dumps(options)))
    assert len(net.blocks) == 3
    mamba_layers = [module for module in net.modules() if isinstance(module, Mamba)]
    assert len(mamba_layers) == 6
    assert {(m.d_model, m.d_state, m.d_conv, m.d_inner) for m in mamba_layers} == {(8, 5, 2, 8)}


def test_bad_inputs_raise():
    net = small_net()
    cond = condition(torch.randn(4, COND_DIM))
    with pytest.raises(ValueError, match=r"z of shape \(B, T, 3\)"):
        net(torch.randn(4, DIM), torch.rand(4), cond)
    with pytest.raises(ValueError, match="s must be"):
        net(torch.randn(4, T, DIM), torch.rand(3), cond)
    with pytest.raises(ValueError, match="cond.vector"):
        net(torch.randn(4, T, DIM), torch.rand(4), condition(torch.randn(4, COND_DIM + 1)))
    with pytest.raises(ValueError, match=r"times must have shape \(5,\) or \(4, 5\)"):
        net(torch.randn(4, T, DIM), torch.rand(4), cond, torch.rand(T + 1))
    with pytest.raises(ValueError, match="positive sizes"):
        MambaBackbone(DIM, COND_DIM, d_state=0)
    with pytest.raises(TypeError, match="bidirectional"):
        MambaBackbone(DIM, COND_DIM, bidirectional="yes")


def target_velocity(z, s, times, shifts):
    # Needs the trajectory's past (a running mean over time), the flow time, the experimental time and the condition.
    running_mean = z.cumsum(1) / torch.arange(1, z.shape[1] + 1)[None, :, None]
    return running_mean * (1 - s)[:, None, None] + shifts[:, None, :] * times[None, :, None]


def test_fits_a_sequence_regression_task():
    torch.manual_seed(0)
    n_conditions = 3
    cond_vectors, shifts = torch.randn(n_conditions, COND_DIM), 2 * torch.randn(n_conditions, DIM)
    times = torch.linspace(0, 1, T)
    net = small_net(hidden_dim=32, n_blocks=1)
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-3)

    def sample(n, generator=None):
        labels = torch.randint(0, n_conditions, (n,), generator=generator)
        z, s = torch.randn(n, T, DIM, generator=generator), torch.rand(n, generator=generator)
        return z, s, condition(cond_vectors[labels]), target_velocity(z, s, times, shifts[labels])

    z_eval, s_eval, cond_eval, v_eval = sample(512, torch.Generator().manual_seed(123))
    zero_prediction_loss = v_eval.square().mean().item()
    start = time.perf_counter()
    for _ in range(150):
        z, s, cond, v = sample(64)
        loss = (net(z, s, cond, times) - v).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        final = (net(z_eval, s_eval, cond_eval, times) - v_eval).square().mean().item()
    print(f"mamba fit: loss {zero_prediction_loss:.4f} -> {final:.5f} in {elapsed:.2f} s")
    # Wall time is printed, not asserted: other jobs share this machine's two cores.
    assert final < zero_prediction_loss / 20
