import pytest
import torch
from scipy import stats

from cellflow.flow import LinearPath, PathSample, sample_flow_time


@pytest.fixture
def path():
    return LinearPath()


@pytest.mark.parametrize("shape", [(5, 3), (4, 6, 3)])
def test_endpoints(path, shape):
    gen = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    n = shape[0]
    assert torch.allclose(path.sample(z0, z1, torch.zeros(n)).zs, z0)
    assert torch.allclose(path.sample(z0, z1, torch.ones(n)).zs, z1)


@pytest.mark.parametrize("shape", [(5, 3), (4, 6, 3)])
def test_shapes_and_fields(path, shape):
    gen = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    s = torch.rand(shape[0], generator=gen)
    out = path.sample(z0, z1, s)
    assert isinstance(out, PathSample)
    assert out.zs.shape == shape and out.velocity.shape == shape and out.s.shape == (shape[0],)
    assert out.z0 is z0 and out.z1 is z1 and out.s is s


def test_each_row_uses_its_own_time(path):
    gen = torch.Generator().manual_seed(2)
    z0, z1 = torch.randn(4, 2, 3, generator=gen), torch.randn(4, 2, 3, generator=gen)
    s = torch.tensor([0.0, 0.25, 0.5, 0.9])
    zs = path.sample(z0, z1, s).zs
    for i, si in enumerate(s.tolist()):
        expected = z0[i] + si * (z1[i] - z0[i])  # hand-written interpolation, row by row
        torch.testing.assert_close(zs[i], expected)


def test_velocity_is_constant_and_matches_finite_difference(path):
    gen = torch.Generator().manual_seed(3)
    z0 = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    z1 = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    ds = 1e-3
    velocities = []
    for s_value in (0.1, 0.5, 0.8):
        s = torch.full((3,), s_value, dtype=torch.float64)
        a, b = path.sample(z0, z1, s), path.sample(z0, z1, s + ds)
        torch.testing.assert_close((b.zs - a.zs) / ds, a.velocity)
        velocities.append(a.velocity)
    torch.testing.assert_close(velocities[0], velocities[1], rtol=0, atol=0)
    torch.testing.assert_close(velocities[0], z1 - z0)


def test_bad_shapes_raise(path):
    z = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        path.sample(z, torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match=r"s must have shape \(B,\)"):
        path.sample(z, z, torch.zeros(3))
    with pytest.raises(ValueError, match=r"s must have shape \(B,\)"):
        path.sample(z, z, torch.zeros(4, 1))


def test_uniform_flow_time():
    s = sample_flow_time(20_000, generator=torch.Generator().manual_seed(0))
    assert s.shape == (20_000,) and s.dtype == torch.float32
    assert s.min() >= 0 and s.max() <= 1
    assert stats.kstest(s.numpy(), "uniform").pvalue > 1e-3
    again = sample_flow_time(20_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, again)


def test_flow_time_bad_arguments():
    with pytest.raises(ValueError, match="n must be"):
        sample_flow_time(-1)
