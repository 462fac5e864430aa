import numpy as np
import pytest
from scipy import sparse

from cellflow.metrics import _distances, energy_distance, energy_distance_unsquared, mmd_rbf, wasserstein


def _sq(a, b):
    return float(np.sum((np.asarray(a) - np.asarray(b)) ** 2))


def _energy_loops(x, y):
    n, m = len(x), len(y)
    between = sum(_sq(a, b) for a in x for b in y) / (n * m)
    within_x = sum(_sq(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    within_y = sum(_sq(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    return 2 * between - within_x - within_y


def _mmd_loops(x, y, gamma):
    def k(a, b):
        return np.exp(-gamma * _sq(a, b))

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(a, b) for a in x for b in y) / (n * m)
    return kxx + kyy - 2 * kxy


def _two_clouds(seed, n=12, m=9, d=4, shift=0.5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(loc=shift, scale=1.5, size=(m, d))


# ---- energy distance ----------------------------------------------------------------------------


def test_energy_distance_hand_examples():
    # x = {0, 1}, y = {4, 5}: between 16, 25, 9, 16 -> mean 16.5; within x = 1, within y = 1
    # E = 2 * 16.5 - 1 - 1 = 31
    assert energy_distance([[0.0], [1.0]], [[4.0], [5.0]]) == pytest.approx(31.0)
    # x = {0, 2}, y = {1, 3}: between 1, 9, 1, 1 -> mean 3; within x = 4, within y = 4 -> E = 6 - 8 = -2
    assert energy_distance([[0.0], [2.0]], [[1.0], [3.0]]) == pytest.approx(-2.0)


def test_energy_distance_matches_double_loop():
    x, y = _two_clouds(0)
    assert energy_distance(x, y) == pytest.approx(_energy_loops(x, y), rel=1e-10)
    assert energy_distance(sparse.csr_matrix(x), y) == pytest.approx(_energy_loops(x, y), rel=1e-10)


def test_energy_distance_invariants():
    x, y = _two_clouds(1)
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x))
    # set with itself: 2 * 0 - 2 * (2 S / (n (n-1))) = -4 S / (n (n-1)), S = total scatter about the mean
    n = len(x)
    scatter = np.sum((x - x.mean(0)) ** 2)
    assert energy_distance(x, x) == pytest.approx(-4 * scatter / (n * (n - 1)))
    assert energy_distance(x, x) == pytest.approx(_energy_loops(x, x))
    # squared distances only see the means: same mean, very different spread -> ~0 on large samples
    rng = np.random.default_rng(2)
    narrow, wide = rng.normal(scale=0.5, size=(4000, 2)), rng.normal(scale=2.0, size=(4000, 2))
    assert abs(energy_distance(narrow, wide)) < 0.02
    assert energy_distance(narrow, wide + 1.0) == pytest.approx(2 * 2 * 1.0**2, rel=0.05)


def test_unsquared_energy_distance_matches_scipy_in_one_dimension():
    from scipy.stats import energy_distance as scipy_energy

    # scipy's is sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) with self-pairs in the within means (V-statistics);
    # ours leaves them out (U-statistics): within means larger by n / (n - 1).
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=30), rng.normal(loc=0.4, scale=2.0, size=20)
    n, m = len(x), len(y)
    between = np.abs(x[:, None] - y[None, :]).mean()
    v_within_x, v_within_y = np.abs(x[:, None] - x).mean(), np.abs(y[:, None] - y).mean()
    assert scipy_energy(x, y) ** 2 == pytest.approx(2 * between - v_within_x - v_within_y)
    expected = scipy_energy(x, y) ** 2 + v_within_x - v_within_x * n / (n - 1) + v_within_y - v_within_y * m / (m - 1)
    assert energy_distance_unsquared(x[:, None], y[:, None]) == pytest.approx(expected, rel=1e-10)


def test_unsquared_energy_distance_sees_spread_and_blocks_agree(monkeypatch):
    from scipy.spatial.distance import cdist

    x, y = _two_clouds(7)
    n, m = len(x), len(y)
    expected = 2 * cdist(x, y).mean() - cdist(x, x).sum() / (n * (n - 1)) - cdist(y, y).sum() / (m * (m - 1))
    assert energy_distance_unsquared(x, y) == pytest.approx(expected, rel=1e-10)
    assert energy_distance_unsquared(sparse.csr_matrix(y), x) == pytest.approx(expected, rel=1e-10)
    monkeypatch.setattr(_distances, "_BLOCK_ENTRIES", 5)
    assert energy_distance_unsquared(x, y) == pytest.approx(expected, rel=1e-10)
    # same mean, another spread: the squared one sees ~nothing, the unsquared one a clear gap
    rng = np.random.default_rng(8)
    narrow, wide = rng.normal(scale=0.5, size=(1500, 2)), rng.normal(scale=2.0, size=(1500, 2))
    same = rng.normal(scale=2.0, size=(1500, 2))
    assert abs(energy_distance(narrow, wide)) < 0.1 * energy_distance(narrow, wide + 1.0)
    assert energy_distance_unsquared(narrow, wide) > 20 * abs(energy_distance_unsquared(same, wide))


def test_distances_reject_bad_input():
    for metric in (energy_distance, energy_distance_unsquared, mmd_rbf, wasserstein):
        with pytest.raises(ValueError, match=r"`y` has 3"):
            metric(np.ones((4, 2)), np.ones((4, 3)))
        with pytest.raises(ValueError, match="NaN"):
            metric(np.full((4, 2), np.nan), np.ones((4, 2)))
    with pytest.raises(ValueError, match="at least 2 cells"):
        energy_distance(np.ones((1, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="at least 2 cells"):
        mmd_rbf(np.ones((4, 2)), np.ones((1, 2)))


# ---- MMD --------------------------------------------------------------------------------------


def test_mmd_hand_example():
    # gamma = 1, x = {0, 1}, y = {0, 2}
    # Kxx (i != j) = e^-1; Kyy = e^-4; Kxy = (e^0 + e^-4 + e^-1 + e^-1) / 4
    # MMD^2 = e^-1 + e^-4 - (1 + e^-4 + 2 e^-1) / 2 = (e^-4 - 1) / 2
    expected = (np.exp(-4) - 1) / 2
    assert mmd_rbf([[0.0], [1.0]], [[0.0], [2.0]], gammas=1.0) == pytest.approx(expected)


def test_mmd_matches_loops_and_averages_gammas():
    x, y = _two_clouds(3)
    for gamma in (0.1, 1.0):
        assert mmd_rbf(x, y, gammas=gamma) == pytest.approx(_mmd_loops(x, y, gamma), rel=1e-9)
    expected = np.mean([_mmd_loops(x, y, 0.1), _mmd_loops(x, y, 1.0)])
    assert mmd_rbf(x, y, gammas=[0.1, 1.0]) == pytest.approx(expected, rel=1e-9)
    assert mmd_rbf(x, y, gammas=[0.1, 1.0]) == pytest.approx(mmd_rbf(y, x, gammas=[0.1, 1.0]))


def test_mmd_blocks_give_the_same_value(monkeypatch):
    x, y = _two_clouds(4)
    whole = mmd_rbf(x, y, gammas=[0.2, 0.7])
    monkeypatch.setattr(_distances, "_BLOCK_ENTRIES", 7)  # one or two rows per block
    assert mmd_rbf(x, y, gammas=[0.2, 0.7]) == pytest.approx(whole, rel=1e-12)


def test_mmd_default_gammas_are_the_documented_median_heuristic():
    from scipy.spatial.distance import pdist

    x, y = _two_clouds(5)
    median_sq = np.median(pdist(np.vstack([x, y]), metric="sqeuclidean"))
    gammas = [1 / (2 * (s**2) * median_sq) for s in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert mmd_rbf(x, y) == pytest.approx(mmd_rbf(x, y, gammas=gammas), rel=1e-10)


def test_mmd_is_unbiased_and_detects_a_difference():
    # Same distribution: the mean over draws is ~0 (the biased V-statistic would be clearly > 0).
    rng = np.random.default_rng(6)
    same = [mmd_rbf(rng.normal(size=(15, 2)), rng.normal(size=(15, 2)), gammas=0.5) for _ in range(300)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    assert min(same) < 0  # unbiased estimates do go below zero
    shifted = [mmd_rbf(rng.normal(size=(15, 2)), rng.normal(1.0, size=(15, 2)), gammas=0.5) for _ in range(50)]
    assert np.mean(shifted) > 10 * np.std(same) / np.sqrt(len(same))


def test_mmd_bad_gammas():
    with pytest.raises(ValueError, match="gammas"):
        mmd_rbf(np.ones((3, 2)), np.zeros((3, 2)), gammas=[1.0, -1.0])


# ---- Wasserstein-2 -----------------------------------------------------------------------------


def test_wasserstein_hand_examples():
    # x = {0, 1}, y = {3, 5}: the sorted pairing (0,3), (1,5) costs (9 + 16) / 2 = 12.5
    assert wasserstein([[0.0], [1.0]], [[3.0], [5.0]]) == pytest.approx(np.sqrt(12.5))
    # one point against two: all mass moves, cost (1 + 9) / 2 = 5
    assert wasserstein([[0.0]], [[1.0], [3.0]]) == pytest.approx(np.sqrt(5.0))


def test_wasserstein_1d_matches_sorted_closed_form():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=50), rng.exponential(size=50)
    expected = np.sqrt(np.mean((np.sort(x) - np.sort(y)) ** 2))
    assert wasserstein(x[:, None], y[:, None]) == pytest.approx(expected, rel=1e-9)


def test_wasserstein_matches_linear_sum_assignment():
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    x, y = _two_clouds(8, n=30, m=30)
    cost = cdist(x, y, metric="sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    expected = np.sqrt(cost[rows, cols].mean())
    assert wasserstein(x, y) == pytest.approx(expected, rel=1e-9)
    assert wasserstein(y, x) == pytest.approx(expected, rel=1e-9)


def test_wasserstein_translation_and_identity():
    x, _ = _two_clouds(9)
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert wasserstein(x, x + shift) == pytest.approx(np.linalg.norm(shift), rel=1e-9)
    assert wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)


def test_wasserstein_sinkhorn_is_close_to_exact():
    x, y = _two_clouds(10, n=40, m=30)
    exact = wasserstein(x, y)
    approx = wasserstein(x, y, method="sinkhorn")
    assert exact - 1e-6 <= approx <= exact * 1.05
    assert wasserstein(x, y, method="sinkhorn", reg=0.05) > approx  # more entropy, further from exact
    # the regularisation is relative to the largest cost: rescaling the data rescales W2 exactly
    assert wasserstein(10 * x, 10 * y, method="sinkhorn") == pytest.approx(10 * approx, rel=1e-6)
    # the log-domain solver (small reg) agrees with the plain one where both work
    log_domain = wasserstein(x, y, method="sinkhorn", reg=0.0019)
    assert exact - 1e-6 <= log_domain <= approx


def test_wasserstein_bad_options():
    with pytest.raises(ValueError, match="method"):
        wasserstein(np.ones((2, 2)), np.ones((2, 2)), method="emd")
    with pytest.raises(ValueError, match="reg"):
        wasserstein(np.ones((2, 2)), np.ones((2, 2)), method="sinkhorn", reg=0.0)
