import importlib
import importlib.util
import math

import pytest
import torch
from torch.nn import functional as F

from cellflow.nn import _mamba
from cellflow.nn._mamba import (
    Mamba,
    mamba_kernels_available,
    mamba_kernels_unavailable_reason,
    selective_scan_parallel,
    selective_scan_sequential,
)


def scan_inputs(batch, d_inner, d_state, length, generator):
    u = torch.randn(batch, d_inner, length, generator=generator)
    delta = 0.5 * torch.randn(batch, d_inner, length, generator=generator)
    A = -torch.rand(d_inner, d_state, generator=generator) * 2  # decaying states, as in Mamba
    B = torch.randn(batch, d_state, length, generator=generator)
    C = torch.randn(batch, d_state, length, generator=generator)
    D = torch.randn(d_inner, generator=generator)
    z = torch.randn(batch, d_inner, length, generator=generator)
    delta_bias = torch.randn(d_inner, generator=generator)
    return u, delta, A, B, C, D, z, delta_bias


@pytest.mark.parametrize("length", [1, 2, 5, 8, 37])
@pytest.mark.parametrize("with_extras", [False, True])
def test_parallel_scan_equals_the_sequential_loop(length, with_extras):
    generator = torch.Generator().manual_seed(length)
    u, delta, A, B, C, D, z, delta_bias = scan_inputs(3, 6, 4, length, generator)
    if with_extras:
        kwargs = {"D": D, "z": z, "delta_bias": delta_bias, "delta_softplus": True}
    else:
        delta = delta.abs()  # positive step sizes without the softplus
        kwargs = {}
    expected = selective_scan_sequential(u, delta, A, B, C, **kwargs)
    assert expected.shape == (3, 6, length)
    torch.testing.assert_close(selective_scan_parallel(u, delta, A, B, C, **kwargs), expected, rtol=1e-5, atol=1e-5)


def test_sequential_scan_equals_a_hand_computed_scalar_recurrence():
    # One channel, one state: h_t = exp(delta_t a) h_{t-1} + delta_t b_t u_t, y_t = c_t h_t + d u_t, * silu(z_t).
    u, delta, b, c, z = [0.5, -1.0, 2.0], [0.1, 0.3, 0.2], [1.0, 2.0, -1.0], [0.5, 1.0, 2.0], [1.0, -0.5, 0.2]
    a, d = -0.7, 0.3
    h, expected = 0.0, []
    for t in range(3):
        h = math.exp(delta[t] * a) * h + delta[t] * b[t] * u[t]
        expected.append((c[t] * h + d * u[t]) * z[t] / (1 + math.exp(-z[t])))

    def as_sequence(values):
        return torch.tensor(values, dtype=torch.float64).view(1, 1, 3)

    args = (as_sequence(u), as_sequence(delta), torch.tensor([[a]], dtype=torch.float64))
    args += (as_sequence(b), as_sequence(c))
    kwargs = {"D": torch.tensor([d], dtype=torch.float64), "z": as_sequence(z)}
    for scan in (selective_scan_sequential, selective_scan_parallel):
        torch.testing.assert_close(scan(*args, **kwargs), as_sequence(expected))


def test_parallel_scan_is_stable_for_long_sequences_with_strong_decay():
    # sum |delta A| reaches ~1e4: a log-space cumsum formulation would overflow exp() in float32.
    generator = torch.Generator().manual_seed(0)
    u, delta, A, B, C, *_ = scan_inputs(2, 4, 3, 300, generator)
    delta, A = delta.abs() + 1.0, A - 10.0
    parallel = selective_scan_parallel(u, delta, A, B, C)
    assert torch.isfinite(parallel).all()
    torch.testing.assert_close(parallel, selective_scan_sequential(u, delta, A, B, C), rtol=1e-5, atol=1e-5)


def test_parallel_scan_gradients_equal_the_loop_gradients():
    generator = torch.Generator().manual_seed(1)
    inputs = [tensor.requires_grad_() for tensor in scan_inputs(2, 3, 4, 6, generator)]
    gradients = []
    for scan in (selective_scan_sequential, selective_scan_parallel):
        u, delta, A, B, C, D, z, delta_bias = inputs
        scan(u, delta, A, B, C, D, z, delta_bias, True).square().sum().backward()
        gradients.append([tensor.grad.clone() for tensor in inputs])
        for tensor in inputs:
            tensor.grad = None
    for sequential, parallel in zip(*gradients):
        torch.testing.assert_close(parallel, sequential, rtol=1e-5, atol=1e-5)


def test_scan_rejects_bad_shapes():
    u, delta, A, B, C, *_ = scan_inputs(2, 3, 4, 5, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="B must be input-dependent"):
        selective_scan_parallel(u, delta, A, B[:, :, :4], C)
    with pytest.raises(ValueError, match=r"A must have shape \(3, d_state\)"):
        selective_scan_sequential(u, delta, A.T, B, C)


def expected_mamba_shapes(d_model, d_state=16, d_conv=4, expand=2):
    # Written out from mamba_ssm/modules/mamba_simple.py (state-spaces/mamba), in its registration order.
    d_inner = expand * d_model
    dt_rank = -(-d_model // 16)
    return {
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


@pytest.mark.parametrize(("d_model", "d_state", "d_conv", "expand"), [(8, 16, 4, 2), (16, 16, 4, 2), (33, 8, 3, 1)])
def test_parameter_names_and_shapes_match_mamba_ssm(d_model, d_state, d_conv, expand):
    block = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    state = {name: tuple(tensor.shape) for name, tensor in block.state_dict().items()}
    expected = expected_mamba_shapes(d_model, d_state, d_conv, expand)
    assert list(state) == list(expected)
    assert state == expected


def test_initialisation_follows_mamba_ssm():
    torch.manual_seed(0)
    block = Mamba(32, dt_min=0.001, dt_max=0.1)
    torch.testing.assert_close(block.A_log.exp(), torch.arange(1.0, 17.0).expand(64, 16))
    assert torch.equal(block.D, torch.ones(64))
    steps = F.softplus(block.dt_proj.bias)
    assert steps.min() >= 0.001 * (1 - 1e-4) and steps.max() <= 0.1 * (1 + 1e-4)
    assert block.dt_proj.weight.abs().max() <= 2**-0.5  # dt_rank = 2: uniform in +-dt_rank**-0.5
    assert Mamba(8, bias=True).in_proj.bias.shape == (32,)


def hand_written_mamba(block, hidden_states):
    # Token by token, in float64, straight from the Mamba-1 equations (no convolution or scan helpers).
    weights = {name: tensor.detach().double() for name, tensor in block.state_dict().items()}
    A = -weights["A_log"].exp()
    kernel = weights["conv1d.weight"][:, 0]  # (d_inner, d_conv)
    batch, length, _ = hidden_states.shape
    outputs = torch.zeros(batch, length, block.d_model, dtype=torch.float64)
    for b in range(batch):
        xz = hidden_states[b].double() @ weights["in_proj.weight"].T  # (L, 2 d_inner)
        x, z = xz[:, : block.d_inner], xz[:, block.d_inner :]
        state = torch.zeros(block.d_inner, block.d_state, dtype=torch.float64)
        for t in range(length):
            conv = weights["conv1d.bias"].clone()
            for k in range(block.d_conv):  # kernel tap k looks back d_conv - 1 - k steps
                source = t - (block.d_conv - 1 - k)
                if source >= 0:
                    conv += kernel[:, k] * x[source]
            xc = conv * torch.sigmoid(conv)
            projected = weights["x_proj.weight"] @ xc
            dt_low = projected[: block.dt_rank]
            B_t = projected[block.dt_rank : block.dt_rank + block.d_state]
            C_t = projected[block.dt_rank + block.d_state :]
            dt = F.softplus(weights["dt_proj.weight"] @ dt_low + weights["dt_proj.bias"])  # (d_inner,)
            state = torch.exp(dt[:, None] * A) * state + (dt * xc)[:, None] * B_t[None, :]
            y = state @ C_t + weights["D"] * xc
            y = y * z[t] * torch.sigmoid(z[t])
            outputs[b, t] = weights["out_proj.weight"] @ y
    return outputs


@pytest.mark.parametrize("scan", [selective_scan_sequential, selective_scan_parallel])
def test_forward_equals_a_hand_written_recurrence(monkeypatch, scan):
    monkeypatch.setattr(Mamba, "_scan_for", staticmethod(lambda x: scan))  # CPU runs the loop; test both
    torch.manual_seed(0)
    block = Mamba(6, d_state=3, d_conv=3, expand=2)
    with torch.no_grad():  # move A and D off their structured initial values
        block.A_log.add_(0.3 * torch.randn_like(block.A_log))
        block.D.add_(torch.randn_like(block.D))
    hidden_states = torch.randn(2, 7, 6)
    output = block(hidden_states)
    assert output.shape == (2, 7, 6)
    torch.testing.assert_close(output.double(), hand_written_mamba(block, hidden_states), rtol=1e-5, atol=1e-5)


def test_forward_is_causal():
    torch.manual_seed(0)
    block = Mamba(8, d_state=4)
    hidden_states = torch.randn(3, 9, 8)
    changed = hidden_states.clone()
    changed[:, 5:] += torch.randn(3, 4, 8)
    before, after = block(hidden_states), block(changed)
    torch.testing.assert_close(after[:, :5], before[:, :5])
    assert (after[:, 5:] - before[:, 5:]).abs().max() > 1e-3


def test_state_dict_loads_between_instances_and_reproduces_outputs():
    torch.manual_seed(0)
    source, target = Mamba(8, d_state=4), Mamba(8, d_state=4)
    hidden_states = torch.randn(2, 5, 8)
    assert not torch.allclose(source(hidden_states), target(hidden_states))
    target.load_state_dict(source.state_dict())
    torch.testing.assert_close(target(hidden_states), source(hidden_states))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="positive sizes"):
        Mamba(8, d_state=0)
    with pytest.raises(ValueError, match="dt_init"):
        Mamba(8, dt_init="uniform")
    with pytest.raises(TypeError, match="dt_rank"):
        Mamba(8, dt_rank="full")
    with pytest.raises(ValueError, match=r"hidden_states of shape \(B, L, 8\)"):
        Mamba(8)(torch.randn(2, 5, 7))


def _cuda_and_mamba_ssm_reason():
    if not torch.cuda.is_available():
        return "needs a CUDA device (mamba-ssm's kernels are CUDA only)"
    if not mamba_kernels_available():
        return f"mamba_ssm is not usable: {mamba_kernels_unavailable_reason()}"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_and_mamba_ssm_reason() is not None, reason=str(_cuda_and_mamba_ssm_reason()))
def test_state_dict_moves_between_cellflow_and_mamba_ssm():
    from mamba_ssm import Mamba as MambaSSM

    torch.manual_seed(0)
    hidden_states = torch.randn(4, 11, 32)
    # The fused fast path (mamba_inner_fn) needs the causal-conv1d package as well.
    fast_paths = [False] + ([True] if importlib.util.find_spec("causal_conv1d") is not None else [])
    for fast_path in fast_paths:
        ours = Mamba(32, d_state=16)
        theirs = MambaSSM(32, d_state=16, use_fast_path=fast_path).cuda()
        theirs.load_state_dict(ours.state_dict())  # cellflow -> mamba_ssm
        torch.testing.assert_close(theirs(hidden_states.cuda()).cpu(), ours(hidden_states), rtol=1e-4, atol=1e-4)
        ours.load_state_dict({name: tensor.cpu() for name, tensor in MambaSSM(32).state_dict().items()})
        theirs.load_state_dict({name: tensor.cuda() for name, tensor in ours.state_dict().items()})  # and back
        torch.testing.assert_close(theirs(hidden_states.cuda()).cpu(), ours(hidden_states), rtol=1e-4, atol=1e-4)
        # On CUDA our block runs mamba-ssm's selective_scan_fn and must agree too.
        torch.testing.assert_close(
            ours.cuda()(hidden_states.cuda()).cpu(), ours.cpu()(hidden_states), rtol=1e-4, atol=1e-4
        )


@pytest.fixture
def fresh_kernel_cache():
    _mamba._load_selective_scan_kernel.cache_clear()
    yield
    _mamba._load_selective_scan_kernel.cache_clear()


def test_a_broken_mamba_ssm_build_is_caught_and_remembered(monkeypatch, fresh_kernel_cache):
    attempts = []
    real_import_module = importlib.import_module

    def broken_import(name, *args, **kwargs):
        if name.startswith("mamba_ssm"):
            attempts.append(name)
            raise OSError(
                "selective_scan_cuda.cpython-312-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEi"
            )
        return real_import_module(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", broken_import)
    assert mamba_kernels_available() is False
    reason = mamba_kernels_unavailable_reason()
    assert "OSError" in reason and "undefined symbol" in reason
    assert mamba_kernels_available() is False
    assert len(attempts) == 1  # one attempt, then the cached answer
    torch.manual_seed(0)
    output = Mamba(8, d_state=4)(torch.randn(2, 3, 8))  # the pure-PyTorch path still works
    assert output.shape == (2, 3, 8) and torch.isfinite(output).all()


@pytest.mark.parametrize(
    "error", [ImportError("No module named 'selective_scan_cuda'"), RuntimeError("triton"), AttributeError("x")]
)
def test_other_import_failures_are_caught(monkeypatch, fresh_kernel_cache, error):
    def broken_import(name, *args, **kwargs):
        raise error

    monkeypatch.setattr(importlib, "import_module", broken_import)
    assert not mamba_kernels_available()
    assert type(error).__name__ in mamba_kernels_unavailable_reason()


def test_a_working_import_reports_available(monkeypatch, fresh_kernel_cache):
    fake_module = type("FakeInterface", (), {"selective_scan_fn": staticmethod(selective_scan_sequential)})
    monkeypatch.setattr(importlib, "import_module", lambda name: fake_module)
    assert mamba_kernels_available() and mamba_kernels_unavailable_reason() is None
    assert Mamba._scan_for(torch.zeros(1)) is selective_scan_sequential  # CPU tensors never use the kernel
