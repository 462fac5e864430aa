import numpy as np
import pytest
from scipy import sparse, stats

from cellflow.metrics import mae_mean, mse_mean, pearson_delta, r2_mean, top_de_genes


def _cells(seed, n_cells=20, n_genes=30, shift=0.0):
    rng = np.random.default_rng(seed)
    return rng.normal(loc=1.0 + shift, scale=0.5, size=(n_cells, n_genes))


def test_pearson_delta_hand_examples():
    control = np.zeros(3)
    # delta_pred = [1, 2, 3], delta_truth = [2, 4, 6]: a positive multiple -> r = 1
    assert pearson_delta(np.array([1.0, 2, 3]), np.array([2.0, 4, 6]), control) == pytest.approx(1.0)
    # delta_pred = [3, 2, 1] -> r = -1
    assert pearson_delta(np.array([3.0, 2, 1]), np.array([2.0, 4, 6]), control) == pytest.approx(-1.0)
    # delta_pred = [1, 0, 1], delta_truth = [0, 1, 2]: centred [1/3, -2/3, 1/3] and [-1, 0, 1]
    # -> sum of products 0, so r = 0
    assert pearson_delta(np.array([1.0, 0, 1]), np.array([0.0, 1, 2]), control) == pytest.approx(0.0, abs=1e-12)


def test_pearson_delta_matches_scipy_on_cell_matrices():
    control, truth, pred = _cells(0), _cells(1, shift=0.3), _cells(2, shift=0.2)
    expected = stats.pearsonr(pred.mean(0) - control.mean(0), truth.mean(0) - control.mean(0)).statistic
    assert pearson_delta(pred, truth, control) == pytest.approx(expected, rel=1e-12)
    # sparse matrices and precomputed mean vectors give the same value
    assert pearson_delta(sparse.csr_matrix(pred), sparse.csc_matrix(truth), control) == pytest.approx(expected)
    assert pearson_delta(pred.mean(0), truth.mean(0), control.mean(0)) == pytest.approx(expected)


def test_pearson_delta_top_k_and_genes():
    control, truth, pred = _cells(3), _cells(4), _cells(5)
    truth[:, [7, 2, 11]] += np.array([3.0, -2.5, 2.0])  # the three largest |changes|, in this order
    delta_truth = truth.mean(0) - control.mean(0)
    delta_pred = pred.mean(0) - control.mean(0)
    top = np.array([7, 2, 11])
    np.testing.assert_array_equal(top_de_genes(truth, control, 3), top)
    expected = stats.pearsonr(delta_pred[top], delta_truth[top]).statistic
    assert pearson_delta(pred, truth, control, top_k=3) == pytest.approx(expected)
    assert pearson_delta(pred, truth, control, genes=top) == pytest.approx(expected)
    mask = np.zeros(30, dtype=bool)
    mask[top] = True
    assert pearson_delta(pred, truth, control, genes=mask) == pytest.approx(expected)


def test_pearson_delta_constant_delta_is_nan():
    control = np.zeros(4)
    assert np.isnan(pearson_delta(np.ones(4), np.array([1.0, 2, 3, 4]), control))


def test_pearson_delta_errors():
    a = np.ones((3, 5))
    with pytest.raises(ValueError, match=r"`truth` has 4"):
        pearson_delta(a, np.ones((3, 4)), a)
    with pytest.raises(ValueError, match="not both"):
        pearson_delta(a, a, a, top_k=2, genes=[0, 1])
    with pytest.raises(ValueError, match="top_k"):
        pearson_delta(a, a, a, top_k=6)
    with pytest.raises(ValueError, match="at least 2 genes"):
        pearson_delta(a, a, a, genes=[1])
    with pytest.raises(TypeError, match="get_indexer"):
        pearson_delta(a, a, a, genes=["GATA1", "KLF1"])
    with pytest.raises(ValueError, match="out of range"):
        pearson_delta(a, a, a, genes=[0, 5])


def test_top_de_genes_hand_example_and_ties():
    # |delta| = [1, 5, 3, 0]; ties keep the lower position first
    np.testing.assert_array_equal(top_de_genes(np.array([1.0, -5, 3, 0]), np.zeros(4), 2), [1, 2])
    np.testing.assert_array_equal(top_de_genes(np.array([2.0, -2, 2]), np.zeros(3), 2), [0, 1])


def test_r2_mse_mae_hand_example():
    truth = np.array([1.0, 2, 3])
    pred = np.array([1.0, 2, 4])
    # residuals [0, 0, 1]: SS_res = 1, SS_tot = 1 + 0 + 1 = 2 -> R2 = 0.5; MSE = MAE = 1/3
    assert r2_mean(pred, truth) == pytest.approx(0.5)
    assert mse_mean(pred, truth) == pytest.approx(1 / 3)
    assert mae_mean(pred, truth) == pytest.approx(1 / 3)
    # residuals [0, -1, -2]: MSE = (0 + 1 + 4) / 3, MAE = (0 + 1 + 2) / 3
    assert mse_mean(np.array([1.0, 3, 5]), truth) == pytest.approx(5 / 3)
    assert mae_mean(np.array([1.0, 3, 5]), truth) == pytest.approx(1.0)


def test_r2_mse_mae_match_sklearn():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    truth, pred = _cells(6), _cells(7, shift=0.1)
    y, y_hat = truth.mean(0), pred.mean(0)
    assert r2_mean(pred, truth) == pytest.approx(r2_score(y, y_hat), rel=1e-12)
    assert mse_mean(sparse.csr_matrix(pred), truth) == pytest.approx(mean_squared_error(y, y_hat))
    assert mae_mean(pred, truth) == pytest.approx(mean_absolute_error(y, y_hat))
    genes = np.arange(0, 30, 3)
    assert r2_mean(pred, truth, genes=genes) == pytest.approx(r2_score(y[genes], y_hat[genes]))
    assert mse_mean(pred, truth, genes=genes) == pytest.approx(mean_squared_error(y[genes], y_hat[genes]))
    # R2 is not symmetric: the truth defines the denominator
    assert r2_mean(truth, pred) == pytest.approx(r2_score(y_hat, y))
    assert r2_mean(truth, pred) != pytest.approx(r2_mean(pred, truth))


def test_r2_constant_truth_follows_sklearn():
    assert r2_mean(np.ones(3), np.ones(3)) == 1.0
    assert r2_mean(np.array([1.0, 2, 3]), np.ones(3)) == 0.0


def test_mean_metrics_reject_mismatched_genes():
    for metric in (r2_mean, mse_mean, mae_mean):
        with pytest.raises(ValueError, match="same number of genes"):
            metric(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="1-D mean vector"):
        mse_mean(np.ones((2, 3, 1)), np.ones(3))
