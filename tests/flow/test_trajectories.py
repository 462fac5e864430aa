"""Trajectories from snapshots: OT chaining, the (group, time point) index, time-resolved shifts, the design."""

import itertools

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import cellflow as cf
from cellflow.flow import batched_assignment, chain_states, chain_trajectories, time_resolved_shifts
from cellflow.pp._codec import ConditionCodec
from cellflow.pp._conditions import parse_condition
from cellflow.pp._setup import get_setup, setup_conditions
from cellflow.train import GroupIndex, build_training_design


def test_chaining_recovers_a_known_permutation():
    """Cells at t1 (t2) are the cells at t0 (t1) moved slightly and shuffled: chaining undoes the shuffles."""
    generator = torch.Generator().manual_seed(0)
    n_groups, n, dim = 3, 40, 6
    t0 = torch.randn(n_groups, n, dim, generator=generator)
    perm1 = torch.stack([torch.randperm(n, generator=generator) for _ in range(n_groups)])
    perm2 = torch.stack([torch.randperm(n, generator=generator) for _ in range(n_groups)])
    t1 = t0.gather(1, perm1[..., None].expand(-1, -1, dim)) + 0.05  # t1[g, j] = t0[g, perm1[g, j]] + shift
    t2 = t1.gather(1, perm2[..., None].expand(-1, -1, dim)) - 0.03
    order = chain_trajectories(torch.stack([t0, t1, t2], dim=2))  # (G, n, T)
    assert torch.equal(order[:, :, 0], torch.arange(n).expand(n_groups, n))
    # Trajectory i starts at t0 cell i; at t1 it must pass through the copy of that cell, then through its copy at t2.
    origin1 = perm1.gather(1, order[:, :, 1])
    origin2 = perm1.gather(1, perm2.gather(1, order[:, :, 2]))
    assert torch.equal(origin1, torch.arange(n).expand(n_groups, n))
    assert torch.equal(origin2, torch.arange(n).expand(n_groups, n))


def test_chain_states_reorders_rows_within_blocks_only():
    generator = torch.Generator().manual_seed(1)
    states = torch.randn(2 * 5, 3, 4, generator=generator)  # two blocks of 5 rows
    chained = chain_states(states, 5)
    for block in range(2):
        rows = slice(5 * block, 5 * block + 5)
        for k in range(3):  # the same cells at every time point, only reordered
            before = sorted(map(tuple, states[rows, k].tolist()))
            assert sorted(map(tuple, chained[rows, k].tolist())) == before
    with pytest.raises(ValueError, match="blocks of cells_per_group=3"):
        chain_states(states, 3)


def test_batched_assignment_is_the_brute_force_optimum():
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 5, 3, generator=generator), torch.randn(4, 5, 3, generator=generator)
    perm = batched_assignment(a, b)
    for g in range(4):
        costs = {p: float(((a[g] - b[g, list(p)]) ** 2).sum()) for p in itertools.permutations(range(5))}
        best = min(costs, key=costs.get)
        assert tuple(perm[g].tolist()) == best
    with pytest.raises(ValueError, match="same shape"):
        batched_assignment(a, b[:, :4])
    with pytest.raises(ValueError, match="finite"):
        batched_assignment(a * float("nan"), b)


def test_index_draws_each_time_point_of_the_group_and_controls_of_its_context():
    n_times = 3
    group_context = np.array([0, 1, 0, 1])  # groups 0, 1: controls of contexts 0, 1; 2, 3: a perturbation
    shuffle = np.random.default_rng(0).permutation(120)
    group = np.repeat(np.arange(4), 30)[shuffle]
    time_code = np.tile(np.arange(n_times), 40)[shuffle]
    context, is_control = group_context[group], group < 2
    index = GroupIndex.build(group, context, is_control, 4, 2, time_code=time_code, n_times=n_times)
    picked = torch.tensor([3, 0, 2])
    target, source, batch_group = index.sample(picked, 20, torch.Generator().manual_seed(0))
    assert target.shape == source.shape == (60, n_times) and torch.equal(batch_group, picked.repeat_interleave(20))
    target, source = target.numpy(), source.numpy()
    assert (group[target] == batch_group.numpy()[:, None]).all()
    assert (time_code[target] == np.arange(n_times)).all() and (time_code[source] == np.arange(n_times)).all()
    assert is_control[source].all()
    assert (context[source] == group_context[batch_group.numpy()][:, None]).all()


def test_time_resolved_shifts_match_hand_computed_means():
    """Token A shifts the latent by (k + 1) * e0 at time point k in context 0; context 1 never measured A alone."""
    dim, n_times = 3, 2
    conditions, context, time_code, latent = [], [], [], []
    for ctx in (0, 1):
        for k in range(n_times):
            for label in ("control", "A") if ctx == 0 else ("control", "B"):
                for _ in range(4):
                    conditions.append(parse_condition(label, control="control"))
                    context.append(ctx)
                    time_code.append(k)
                    shift = np.zeros(dim)
                    shift[0] = (k + 1) if label == "A" else 0.0
                    shift[1] = 5.0 if label == "B" else 0.0
                    latent.append(10.0 * ctx + 3.0 * k + shift)
    shifts = time_resolved_shifts(
        np.array(latent), conditions, np.array(context), np.array(time_code), 2, n_times, ["A", "B"]
    )
    table = shifts.table.numpy().reshape(2, n_times, 2, dim)
    np.testing.assert_allclose(table[0, 0, 0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(table[0, 1, 0], [2, 0, 0], atol=1e-6)
    # A in context 1 takes its shift in context 0 at the same time point, not a mean over time points.
    np.testing.assert_allclose(table[1, 1, 0], [2, 0, 0], atol=1e-6)
    np.testing.assert_allclose(table[0, 1, 1], [0, 5, 0], atol=1e-6)
    assert shifts.measured.numpy().reshape(2, n_times, 2)[:, :, 0].tolist() == [[True, True], [False, False]]


def test_time_resolved_shifts_derive_tokens_measured_only_in_combinations():
    """C is measured only in A+C: at each time point its shift is shift(A+C) - shift(A) there (it was 0 before)."""
    dim, n_times = 2, 3
    conditions, time_code, latent = [], [], []
    for k in range(n_times):
        for label, mean in (("control", [0, 0]), ("A", [k + 1, 0]), ("A+C", [k + 1, 2 * (k + 1)])):
            for _ in range(3):
                conditions.append(parse_condition(label, control="control"))
                time_code.append(k)
                latent.append(np.array(mean, dtype=float) + 7.0 * k)
    shifts = time_resolved_shifts(
        np.array(latent), conditions, np.zeros(len(latent), dtype=int), np.array(time_code), 1, n_times, ["A", "C"]
    )
    table = shifts.table.numpy().reshape(n_times, 2, dim)
    for k in range(n_times):
        np.testing.assert_allclose(table[k, 0], [k + 1, 0], atol=1e-5)
        np.testing.assert_allclose(table[k, 1], [0, 2 * (k + 1)], atol=1e-5)
    assert not shifts.measured.numpy()[:, 1].any()  # C was never measured alone


def _course(drop_time_of: str | None = None) -> ad.AnnData:
    labels = np.repeat(["control", "A", "B"], 12)
    obs = pd.DataFrame({"perturbation": labels, "time": np.tile([1.0, 2.0, 4.0], 12)})
    if drop_time_of is not None:
        obs = obs[~((obs["perturbation"] == drop_time_of) & (obs["time"] == 4.0))]
    obs.index = [f"c{i}" for i in range(len(obs))]
    counts = np.random.default_rng(0).poisson(2.0, (len(obs), 5)).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs)
    adata.var_names = [f"g{i}" for i in range(5)]
    cf.pp.setup(adata, perturbation_key="perturbation", control="control", time_key="time")
    return adata


def _design(adata, **kwargs):
    setup = get_setup(adata)
    conditions = setup_conditions(adata, setup)
    codec = ConditionCodec(["A", "B"], {})
    return build_training_design(adata, setup, codec, conditions, **kwargs)


def test_trajectory_groups_are_not_split_by_time():
    adata = _course()
    per_time, over_time = _design(adata), _design(adata, over_time=True)
    assert len(per_time.group_context) == 9 and len(over_time.group_context) == 3
    assert over_time.time_points.tolist() == [1.0, 2.0, 4.0]
    np.testing.assert_array_equal(over_time.time_code, np.searchsorted([1.0, 2.0, 4.0], adata.obs["time"]))
    labels = adata.obs["perturbation"].to_numpy()
    for g in range(3):  # each trajectory group holds exactly one condition, at every time point
        assert len(set(labels[over_time.group == g])) == 1
        assert set(over_time.time_code[over_time.group == g]) == {0, 1, 2}


def test_a_condition_missing_a_time_point_is_named():
    with pytest.raises(ValueError, match=r"'B': no cells at \['4'\]") as error:
        _design(_course(drop_time_of="B"), over_time=True)
    assert "'A'" not in str(error.value)  # complete conditions are not listed
    _design(_course(drop_time_of="B"))  # per-time-point groups do not need complete time courses
