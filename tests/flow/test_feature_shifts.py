"""Shifts of tokens measured nowhere, predicted from their features (ridge regression, leave-one-out penalty)."""

import numpy as np
import pytest
import torch

from cellflow.flow import TokenShifts
from cellflow.flow._feature_shifts import RIDGE_PENALTIES, predict_from_features
from cellflow.pp._conditions import Condition


def _linear_tokens(n_tokens=40, n_features=10, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_tokens, n_features))
    shifts = features @ rng.normal(size=(n_features, 3)) + 2.0
    known = np.arange(n_tokens) < 30
    return features, shifts, known


def test_shifts_linear_in_the_features_are_recovered_and_known_rows_kept():
    features, shifts, known = _linear_tokens()
    filled, penalty = predict_from_features(np.where(known[:, None], shifts, 0.0), known, features)
    assert np.isfinite(penalty)
    np.testing.assert_array_equal(filled[known], shifts[known])
    error = np.abs(filled[~known] - shifts[~known]).mean()
    error_of_mean = np.abs(shifts[known].mean(axis=0) - shifts[~known]).mean()
    assert error < 0.1 * error_of_mean


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
    from cellflow.flow._feature_shifts import _leave_one_out_penalty

    x, y = features[known][:8], shifts[known][:8]
    u, s, _ = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    keep = s > s.max() * 1e-10
    chosen = _leave_one_out_penalty(y - y.mean(axis=0), u[:, keep], s[keep])

    scale = float(np.mean(s[keep] ** 2))

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
    with pytest.raises(ValueError, match="rows for"):
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
