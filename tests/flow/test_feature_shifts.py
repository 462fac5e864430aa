"""Shifts of tokens measured nowhere, predicted from their features (ridge regression, leave-one-out penalty)."""

import numpy as np
import pytest
import torch

from cellflow.flow import TokenShifts, _feature_shifts, time_resolved_shifts
from cellflow.flow._feature_shifts import RIDGE_PENALTIES, FeatureRegression, _leave_one_out_penalty
from cellflow.pp._conditions import Condition


def _linear_tokens(n_tokens=40, n_features=10, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_tokens, n_features))
    shifts = features @ rng.normal(size=(n_features, 3)) + 2.0
    known = np.arange(n_tokens) < 30
    return features, shifts, known


def predict_from_features(values, known, features):
    return FeatureRegression(features, known).predict(values)


def test_shifts_linear_in_the_features_are_recovered_and_known_rows_kept():
    features, shifts, known = _linear_tokens()
    filled, penalty = predict_from_features(np.where(known[:, None], shifts, 0.0), known, features)
    assert np.isfinite(penalty)
    np.testing.assert_array_equal(filled[known], shifts[known])
    error = np.abs(filled[~known] - shifts[~known]).mean()
    error_of_mean = np.abs(shifts[known].mean(axis=0) - shifts[~known]).mean()
    assert error < 0.1 * error_of_mean


def test_the_prediction_is_the_closed_form_ridge_at_the_penalty_chosen():
    features, shifts, known = _linear_tokens(n_tokens=40, n_features=60, seed=6)
    shifts = shifts + np.random.default_rng(7).normal(scale=1.0, size=shifts.shape)
    filled, relative = predict_from_features(shifts, known, features)
    assert np.isfinite(relative)
    x, y = features[known] - features[known].mean(axis=0), shifts[known] - shifts[known].mean(axis=0)
    penalty = relative * float(np.mean(np.linalg.svd(x, compute_uv=False)[: len(x) - 1] ** 2))
    coefficients = np.linalg.solve(x.T @ x + penalty * np.eye(x.shape[1]), x.T @ y)
    expected = shifts[known].mean(axis=0) + (features[~known] - features[known].mean(axis=0)) @ coefficients
    np.testing.assert_allclose(filled[~known], expected, rtol=1e-8, atol=1e-10)


def test_many_tokens_and_features_go_through_leading_axes_exactly_when_they_suffice(monkeypatch):
    rng = np.random.default_rng(8)
    features = rng.normal(size=(60, 4)) @ rng.normal(size=(4, 50))  # rank 4: four axes hold everything
    shifts = features @ rng.normal(size=(50, 3)) * 0.1 + rng.normal(scale=0.5, size=(60, 3))
    known = np.arange(60) < 45
    exact = predict_from_features(shifts, known, features)
    monkeypatch.setattr(_feature_shifts, "MAX_COMPONENTS", 6)  # 45 x 50 > 2 x 6: the randomized path
    randomized = predict_from_features(shifts, known, features)
    assert randomized[1] == exact[1]
    np.testing.assert_allclose(randomized[0], exact[0], rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(predict_from_features(shifts, known, features)[0], randomized[0])  # deterministic


def test_constant_or_non_finite_features():
    values = np.arange(12.0).reshape(6, 2)
    known = np.array([True, True, True, True, False, False])
    filled, relative = predict_from_features(values, known, np.ones((6, 3)))
    assert np.isinf(relative)  # nothing to regress on: the mean
    np.testing.assert_array_equal(filled[~known], np.tile(values[known].mean(axis=0), (2, 1)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        FeatureRegression(np.full((6, 3), np.nan), known)


def test_features_unrelated_to_the_shifts_fall_back_towards_the_mean():
    features, _, known = _linear_tokens(seed=1)
    shifts = np.random.default_rng(2).normal(size=(40, 3)) + 5.0
    filled, penalty = predict_from_features(shifts, known, features)
    assert penalty >= 10.0
    mean = shifts[known].mean(axis=0)
    # Shrunk: far nearer the mean of the known tokens than least squares would put them.
    assert np.abs(filled[~known] - mean).max() < 0.5 * np.abs(shifts[known] - mean).max()


def test_the_leave_one_out_shortcut_equals_refitting_without_each_token():
    features, shifts, known = _linear_tokens(n_tokens=12, n_features=30, seed=3)
    shifts = shifts + np.random.default_rng(4).normal(size=shifts.shape)
    x, y = features[known][:8], shifts[known][:8]
    u, s, _ = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    keep = s > s.max() * 1e-10
    u, s = u[:, keep], s[keep]
    chosen = _leave_one_out_penalty(y - y.mean(axis=0), u, s, u.T @ (y - y.mean(axis=0)))

    scale = float(np.mean(s**2))

    def refit_error(relative):  # leave each token out, refit, predict it
        total = 0.0
        for i in range(len(y)):
            rest = np.arange(len(y)) != i
            x_mean, y_mean = x[rest].mean(axis=0), y[rest].mean(axis=0)
            prediction = y_mean
            if not np.isinf(relative):
                ur, sr, vr = np.linalg.svd(x[rest] - x_mean, full_matrices=False)
                weights = (sr / (sr**2 + relative * scale))[:, None] * (ur.T @ (y[rest] - y_mean))
                prediction = y_mean + (x[i] - x_mean) @ (vr.T @ weights)
            total += float(np.sum((y[i] - prediction) ** 2))
        return total

    errors = {relative: refit_error(relative) for relative in RIDGE_PENALTIES}
    assert chosen == min(errors, key=errors.get)


def test_too_few_or_no_measured_tokens():
    features = np.random.default_rng(0).normal(size=(5, 4))
    values = np.arange(10.0).reshape(5, 2)
    two = np.array([True, True, False, False, False])
    filled, penalty = predict_from_features(values, two, features)
    assert np.isinf(penalty)  # too few to regress: the mean
    np.testing.assert_array_equal(filled[2:], np.tile(values[:2].mean(axis=0), (3, 1)))
    filled, penalty = predict_from_features(values, np.zeros(5, dtype=bool), features)
    assert np.isnan(penalty)
    np.testing.assert_array_equal(filled, values)
    with pytest.raises(ValueError, match="for 5 tokens"):
        predict_from_features(values, two, features[:3])


def test_token_shifts_predict_tokens_measured_nowhere_from_features():
    rng = np.random.default_rng(0)
    tokens = [f"T{i}" for i in range(8)]
    features = rng.normal(size=(8, 3))
    true_shift = features @ np.array([[1.0, 0.0], [0.0, 2.0], [0.5, -1.0]])
    conditions, latent = [], []
    for _ in range(50):
        conditions.append(Condition((), ()))
        latent.append(rng.normal(scale=0.01, size=2))
    for i in range(6):  # T6 and T7 are never measured
        for _ in range(50):
            conditions.append(Condition((tokens[i],), (1.0,)))
            latent.append(true_shift[i] + rng.normal(scale=0.01, size=2))
    latent, context = np.array(latent), np.zeros(len(conditions), dtype=np.int64)
    plain = TokenShifts.from_cells(latent, conditions, context, 1, tokens, mode="measured")
    assert torch.count_nonzero(plain.table[0, 6:]) == 0  # without features: no shift
    shifts = TokenShifts.from_cells(latent, conditions, context, 1, tokens, mode="measured", features=features)
    torch.testing.assert_close(shifts.table[0, :6], plain.table[0, :6])
    error = np.abs(shifts.table[0, 6:].numpy() - true_shift[6:]).max()
    error_of_mean = np.abs(true_shift[:6].mean(axis=0) - true_shift[6:]).max()
    assert error < 0.25 * error_of_mean, (error, error_of_mean)


def test_time_resolved_shifts_predict_unmeasured_tokens_at_every_time_point():
    rng = np.random.default_rng(1)
    tokens = [f"T{i}" for i in range(8)]
    features = rng.normal(size=(8, 3))
    weights = {0: np.array([[1.0, 0.0], [0.0, 2.0], [0.5, -1.0]]), 1: np.array([[2.0, 0.0], [0.0, 4.0], [1.0, -2.0]])}
    conditions, latent, time_code = [], [], []
    for k, w in weights.items():  # the effects double from time point 0 to 1
        for label in [None, *tokens[:6]]:  # T6 and T7 are never measured
            shift = np.zeros(2) if label is None else features[tokens.index(label)] @ w
            for _ in range(40):
                conditions.append(Condition(() if label is None else (label,), () if label is None else (1.0,)))
                latent.append(shift + rng.normal(scale=0.01, size=2))
                time_code.append(k)
    latent, time_code = np.array(latent), np.array(time_code)
    context = np.zeros(len(latent), dtype=np.int64)
    shifts = time_resolved_shifts(latent, conditions, context, time_code, 1, 2, tokens, features)
    for k, w in weights.items():
        truth = features[6:] @ w
        error = np.abs(shifts.table[k, 6:].numpy() - truth).max()
        assert error < 0.25 * np.abs(truth - (features[:6] @ w).mean(axis=0)).max(), (k, error)
