import math

import pytest
import torch

from cellflow._constants import SOLVER_METHODS
from cellflow.flow import ODESolver

Z0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0], [0.7, -1.2]], dtype=torch.float64)
OMEGA = 2.0


def rotation(z, s):
    """dz/ds = OMEGA * J z: rotation at constant angular speed (autonomous)."""
    return OMEGA * torch.stack([-z[:, 1], z[:, 0]], dim=1)


def rotation_exact(z0, s_start, s_end):
    angle = OMEGA * (s_end - s_start)
    c, sn = math.cos(angle), math.sin(angle)
    return torch.stack([c * z0[:, 0] - sn * z0[:, 1], sn * z0[:, 0] + c * z0[:, 1]], dim=1)


def growth(z, s):
    """dz/ds = (1 + 2 s) z: time-dependent, so a wrong stage time spoils the order."""
    return z * (1 + 2 * s)[:, None]


def growth_exact(z0, s_start, s_end):
    g = lambda s: s + s * s  # noqa: E731
    return z0 * math.exp(g(s_end) - g(s_start))


ODES = {"rotation": (rotation, rotation_exact), "growth": (growth, growth_exact)}


@pytest.mark.parametrize("ode", list(ODES))
@pytest.mark.parametrize(("method", "order", "steps"), [("euler", 1, 64), ("heun", 2, 32), ("rk4", 4, 16)])
def test_order_of_accuracy(ode, method, order, steps):
    f, exact = ODES[ode]
    target = exact(Z0, 0.0, 1.0)
    solver = ODESolver(f)
    coarse = (solver.sample(Z0, method=method, steps=steps) - target).abs().max().item()
    fine = (solver.sample(Z0, method=method, steps=2 * steps) - target).abs().max().item()
    observed = math.log2(coarse / fine)
    assert abs(observed - order) < 0.1, f"{method} on {ode}: observed order {observed:.3f}, expected {order}"


@pytest.mark.parametrize(("method", "evals_per_step"), [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_fixed_step_nfe(method, evals_per_step):
    solver = ODESolver(rotation)
    assert solver.last_nfe is None
    solver.sample(Z0, method=method, steps=5)
    assert solver.last_nfe == 5 * evals_per_step


@pytest.mark.parametrize("ode", list(ODES))
def test_dopri5_reaches_exact_solution(ode):
    f, exact = ODES[ode]
    solver = ODESolver(f)
    loose = solver.sample(Z0, method="dopri5", atol=1e-6, rtol=1e-6)
    loose_nfe = solver.last_nfe
    torch.testing.assert_close(loose, exact(Z0, 0.0, 1.0), atol=1e-4, rtol=1e-4)
    tight = solver.sample(Z0, method="dopri5", atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(tight, exact(Z0, 0.0, 1.0), atol=1e-8, rtol=1e-8)
    assert isinstance(loose_nfe, int) and 0 < loose_nfe < solver.last_nfe


def test_constant_velocity_exact_in_one_euler_step():
    # The rectified-flow ideal: straight paths, v = z1 - z0 everywhere along them.
    gen = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
    solver = ODESolver(lambda z, s: z1 - z0)
    out = solver.sample(z0, method="euler", steps=1)
    torch.testing.assert_close(out, z1)
    assert solver.last_nfe == 1


def test_sub_interval_and_backward_integration():
    solver = ODESolver(growth)
    mid = solver.sample(Z0, method="rk4", steps=64, s_span=(0.25, 0.75))
    torch.testing.assert_close(mid, growth_exact(Z0, 0.25, 0.75), atol=1e-9, rtol=1e-9)
    forward = solver.sample(Z0, method="rk4", steps=64)
    back = solver.sample(forward, method="rk4", steps=64, s_span=(1.0, 0.0))
    torch.testing.assert_close(back, Z0, atol=1e-6, rtol=1e-6)
    back_adaptive = solver.sample(forward, method="dopri5", s_span=(1.0, 0.0), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(back_adaptive, Z0, atol=1e-6, rtol=1e-6)


def test_velocity_fn_receives_one_time_per_row():
    seen = []

    def velocity(z, s):
        seen.append((s.shape, s.dtype, s.clone()))
        return torch.zeros_like(z)

    z0 = torch.zeros(4, 2, 3, dtype=torch.float32)
    ODESolver(velocity).sample(z0, method="euler", steps=4, s_span=(0.0, 1.0))
    assert all(shape == (4,) and dtype == torch.float32 for shape, dtype, _ in seen)
    torch.testing.assert_close(torch.stack([s[0] for *_, s in seen]), torch.tensor([0.0, 0.25, 0.5, 0.75]))
    assert all(torch.all(s == s[0]) for *_, s in seen)


@pytest.mark.parametrize("method", SOLVER_METHODS)
@pytest.mark.parametrize("shape", [(3, 2), (3, 5, 2)])
def test_states_of_any_shape_follow_the_exact_solution(method, shape):
    z0 = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    end = ODESolver(lambda z, s: -z).sample(z0, method=method, steps=4)
    assert end.shape == z0.shape
    torch.testing.assert_close(end, z0 * math.exp(-1), atol=0.1, rtol=0.1)  # dz/ds = -z: z0 exp(-s)


def test_no_grad_by_default_and_grad_on_request():
    weight = torch.tensor(0.5, requires_grad=True)
    z0 = torch.ones(2, 3, requires_grad=True)
    solver = ODESolver(lambda z, s: weight * z)
    assert not solver.sample(z0, method="euler", steps=1).requires_grad
    out = solver.sample(z0, method="euler", steps=1, enable_grad=True)  # z0 (1 + weight)
    out.sum().backward()
    torch.testing.assert_close(z0.grad, torch.full((2, 3), 1.5))
    torch.testing.assert_close(weight.grad, torch.tensor(6.0))


def test_bad_arguments_raise():
    solver = ODESolver(rotation)
    with pytest.raises(ValueError, match="euler, heun, rk4, dopri5"):
        solver.sample(Z0, method="midpoint")
    for steps in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="steps must be an int >= 1"):
            solver.sample(Z0, steps=steps)
    with pytest.raises(ValueError, match="s_span"):
        solver.sample(Z0, s_span=(0.5, 0.5))
    with pytest.raises(TypeError, match="floating"):
        solver.sample(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="velocity_fn returned shape"):
        ODESolver(lambda z, s: z[:, :1]).sample(Z0, steps=2)
    with pytest.raises(TypeError, match="callable"):
        ODESolver("not a function")
