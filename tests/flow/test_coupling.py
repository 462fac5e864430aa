import itertools

import numpy as np
import pytest
import torch

from cellflow.flow import ot_pairing_grouped, population_ot_partners, random_pairing


def ot_pairing(z0, z1):
    """Exact OT over the whole batch: one group."""
    return ot_pairing_grouped(z0, z1, torch.zeros(len(z0), dtype=torch.long))


def transport_cost(z0, z1, perm):
    """Mean squared distance of the pairs (z0[perm[i]], z1[i]), written without the module."""
    return float(((z0[perm] - z1) ** 2).flatten(1).sum(dim=1).mean())


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _brute_force_cost(z0, z1):
    """Smallest mean squared pair distance over all permutations, written without the module."""
    a, b = z0.flatten(1).numpy(), z1.flatten(1).numpy()
    best_cost, best_perm = np.inf, None
    for perm in itertools.permutations(range(len(a))):
        cost = float(((a[list(perm)] - b) ** 2).sum(axis=1).mean())
        if cost < best_cost:
            best_cost, best_perm = cost, perm
    return best_cost, torch.tensor(best_perm)


def _is_permutation(perm, n):
    return perm.dtype == torch.int64 and torch.equal(torch.sort(perm).values, torch.arange(n))


def test_transport_cost_by_hand():
    z0 = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    z1 = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    # pairs (z0[1], z1[0]): 1; (z0[0], z1[1]): 4 -> mean 2.5
    assert transport_cost(z0, z1, torch.tensor([1, 0])) == pytest.approx(2.5)
    # identity: (0,0)-(1,1): 2; (1,0)-(0,2): 5 -> mean 3.5
    assert transport_cost(z0, z1, torch.tensor([0, 1])) == pytest.approx(3.5)
    assert torch.equal(ot_pairing(z0, z1), torch.tensor([1, 0]))


def test_ot_cost_not_above_random():
    ot_costs, random_costs = [], []
    for seed in range(20):
        z0, z1 = _randn(32, 5, seed=seed), _randn(32, 5, seed=100 + seed) + 0.5
        ot_perm = ot_pairing(z0, z1)
        rand_perm = random_pairing(z0, z1, generator=torch.Generator().manual_seed(seed))
        assert _is_permutation(ot_perm, 32) and _is_permutation(rand_perm, 32)
        ot_costs.append(transport_cost(z0, z1, ot_perm))
        random_costs.append(transport_cost(z0, z1, rand_perm))
        assert ot_costs[-1] <= random_costs[-1] + 1e-12
        # OT is also no worse than leaving the rows in their given order.
        assert ot_costs[-1] <= transport_cost(z0, z1, torch.arange(32)) + 1e-12
    assert np.mean(ot_costs) < 0.8 * np.mean(random_costs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(seed):
    z0, z1 = _randn(6, 3, seed=seed), _randn(6, 3, seed=50 + seed)
    best_cost, best_perm = _brute_force_cost(z0, z1)
    perm = ot_pairing(z0, z1)
    assert transport_cost(z0, z1, perm) == pytest.approx(best_cost, rel=1e-12)
    assert torch.equal(perm, best_perm)  # the optimum is unique for continuous random data


def test_recovers_known_pairing_3d():
    z0 = _randn(40, 4, 3, seed=7)
    perm_true = torch.randperm(40, generator=torch.Generator().manual_seed(7))
    z1 = z0[perm_true] + 1e-3 * _randn(40, 4, 3, seed=8)
    assert torch.equal(ot_pairing(z0, z1), perm_true)


def test_3d_equals_flattened():
    z0, z1 = _randn(12, 3, 2, seed=1), _randn(12, 3, 2, seed=2)
    assert torch.equal(ot_pairing(z0, z1), ot_pairing(z0.reshape(12, 6), z1.reshape(12, 6)))


def test_float32_input():
    z0, z1 = _randn(10, 4, seed=3).float(), _randn(10, 4, seed=4).float()
    assert torch.equal(ot_pairing(z0, z1), ot_pairing(z0.double(), z1.double()))


def _grouped_data():
    # Non-contiguous, unsorted group ids with unequal group sizes (3, 4, 5).
    groups = torch.tensor([7] * 3 + [2] * 4 + [11] * 5)
    groups = groups[torch.randperm(12, generator=torch.Generator().manual_seed(0))]
    return _randn(12, 3, seed=20), _randn(12, 3, seed=21), groups


def test_grouped_never_crosses_groups_and_is_optimal_per_group():
    z0, z1, groups = _grouped_data()
    perm = ot_pairing_grouped(z0, z1, groups)
    assert _is_permutation(perm, 12)
    assert torch.equal(groups[perm], groups)
    for group in groups.unique():
        rows = torch.nonzero(groups == group).squeeze(1)
        # Map the group's global indices to local ones and compare with an independent brute force.
        local = torch.searchsorted(rows, perm[rows])
        assert torch.equal(rows[local], perm[rows])
        best_cost, best_perm = _brute_force_cost(z0[rows], z1[rows])
        assert torch.equal(local, best_perm)
        assert torch.equal(local, ot_pairing(z0[rows], z1[rows]))


def test_grouped_with_one_group_equals_ungrouped():
    z0, z1 = _randn(15, 4, seed=30), _randn(15, 4, seed=31)
    assert torch.equal(ot_pairing_grouped(z0, z1, torch.zeros(15, dtype=torch.long)), ot_pairing(z0, z1))


def test_grouped_cost_not_below_ungrouped():
    z0, z1, groups = _grouped_data()
    assert transport_cost(z0, z1, ot_pairing_grouped(z0, z1, groups)) >= transport_cost(z0, z1, ot_pairing(z0, z1))


def test_random_pairing_within_groups_and_seeded():
    z0, z1, groups = _grouped_data()
    perm = random_pairing(z0, z1, groups, generator=torch.Generator().manual_seed(0))
    assert _is_permutation(perm, 12)
    assert torch.equal(groups[perm], groups)
    again = random_pairing(z0, z1, groups, generator=torch.Generator().manual_seed(0))
    assert torch.equal(perm, again)


def test_bad_inputs_raise():
    z = torch.zeros(5, 3)
    with pytest.raises(ValueError, match="same number of rows"):
        ot_pairing(z, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="trailing shape"):
        ot_pairing(z, torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        ot_pairing(torch.zeros(5), torch.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        ot_pairing(torch.full((5, 3), float("nan")), z)
    with pytest.raises(ValueError, match="same number of rows"):
        ot_pairing_grouped(z, torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="groups must have shape"):
        ot_pairing_grouped(z, z, torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        ot_pairing_grouped(z, z, torch.zeros(5))
    with pytest.raises(ValueError, match="same number of rows"):
        random_pairing(z, torch.zeros(4, 3))


def test_population_partners_recover_a_known_matching():
    g = torch.Generator().manual_seed(0)
    sources = torch.randn(60, 5, generator=g)
    perm = torch.randperm(60, generator=g)
    targets = sources[perm] + 1e-4 * torch.randn(60, 5, generator=g)
    assert torch.equal(population_ot_partners(targets, sources), perm)


def test_population_partners_cost_less_than_minibatch_ot():
    # OT over the whole populations is the cheapest one-to-one pairing; re-pairing minibatches of
    # 20 only finds the best pairing inside each minibatch.
    g = torch.Generator().manual_seed(1)
    sources, targets = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g) + 0.5
    population = ((targets - sources[population_ot_partners(targets, sources)]) ** 2).sum(1).mean()
    order = torch.randperm(200, generator=g)
    minibatch = []
    for rows in order.split(20):
        perm = ot_pairing(sources[rows], targets[rows])
        minibatch.append(((targets[rows] - sources[rows][perm]) ** 2).sum(1))
    assert population < 0.9 * torch.cat(minibatch).mean()


def test_population_partners_in_blocks_and_with_few_sources():
    g = torch.Generator().manual_seed(2)
    targets, sources = torch.randn(50, 3, generator=g), torch.randn(7, 3, generator=g)
    # More targets than sources: sources repeat, each used at most ceil(50 / 7) times.
    few = population_ot_partners(targets, sources)
    assert few.min() >= 0 and few.max() < 7 and torch.bincount(few).max() <= 8
    # Blocks of 4 targets, each paired with 8 of 100 sources drawn with the generator: seeded, distinct per block.
    many = torch.randn(100, 3, generator=g)
    first = population_ot_partners(targets, many, block=4, generator=torch.Generator().manual_seed(5))
    again = population_ot_partners(targets, many, block=4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and first.min() >= 0 and first.max() < 100
    with pytest.raises(ValueError, match="sources is empty"):
        population_ot_partners(targets, sources[:0])
    with pytest.raises(ValueError, match="same D"):
        population_ot_partners(targets, torch.randn(5, 4))
