"""Shifts of tokens never measured, predicted from their features by ridge regression on the measured ones.

A token with a feature row (``token_embedding="expression"`` or a user table) but no cells of
its own has no shift to measure. Left at zero, its cells would be predicted as control cells
and the flow would have to learn the whole effect from a handful of training tokens, which it
cannot. Instead, the shifts of the measured tokens are regressed on their features (ridge, with
an unpenalised intercept) and the regression predicts the unmeasured ones. The penalty is
chosen by leave-one-token-out error among :data:`RIDGE_PENALTIES`, whose infinite end is the
mean shift of the measured tokens: the training-mean baseline of Ahlmann-Eltze et al. (Nat
Methods 2025), which the regression falls back to where the features do not predict.
"""

from __future__ import annotations

import numpy as np

RIDGE_PENALTIES = (0.01, 0.1, 1.0, 10.0, 100.0, np.inf)
"""Ridge penalties, as multiples of the mean squared singular value of the centred features."""

MIN_TOKENS_FOR_REGRESSION = 3
"""With fewer measured tokens the prediction is their mean shift (leave-one-out needs at least three)."""


def predict_from_features(values: np.ndarray, known: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, float]:
    """Fill the rows of unknown tokens with the ridge regression of the known rows on the features.

    Parameters
    ----------
    values
        ``(n_tokens, D)``: the shift of every token (rows of unknown tokens are ignored).
    known
        ``(n_tokens,)`` boolean: tokens whose shift was measured.
    features
        ``(n_tokens, F)``: every token's feature row.

    Returns
    -------
    values, penalty
        ``values`` with the unknown rows predicted (known rows unchanged) and the penalty chosen,
        as a multiple of the mean squared singular value of the centred features (``inf``: the
        mean of the known rows; ``nan`` when no token is known and nothing is filled).
    """
    values = np.asarray(values, dtype=np.float64)
    known = np.asarray(known, dtype=bool)
    features = np.asarray(features, dtype=np.float64)
    if features.shape[0] != values.shape[0]:
        raise ValueError(f"features has {features.shape[0]} rows for {values.shape[0]} tokens.")
    if not known.any() or known.all():
        return values, float("nan") if not known.any() else float("inf")
    y, x = values[known], features[known]
    y_mean, x_mean = y.mean(axis=0), x.mean(axis=0)
    filled = values.copy()
    if known.sum() < MIN_TOKENS_FOR_REGRESSION:
        filled[~known] = y_mean
        return filled, float("inf")
    u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
    keep = s > s.max() * 1e-10 if s.size else s > 0
    u, s, vt = u[:, keep], s[keep], vt[keep]
    relative = _leave_one_out_penalty(y - y_mean, u, s)
    filled[~known] = y_mean
    if np.isfinite(relative) and s.size:
        # Coefficients V diag(s / (s^2 + lambda)) U^T y, applied to the unknown tokens' centred features.
        penalty = relative * float(np.mean(s**2))
        coefficients = vt.T @ ((s / (s**2 + penalty))[:, None] * (u.T @ (y - y_mean)))
        filled[~known] += (features[~known] - x_mean) @ coefficients
    return filled, relative


def _leave_one_out_penalty(y: np.ndarray, u: np.ndarray, s: np.ndarray) -> float:
    """The entry of :data:`RIDGE_PENALTIES` with the least leave-one-out squared error (summed over outputs).

    Ridge with an unpenalised intercept is a linear smoother with hat matrix
    ``H = 11^T / n + U diag(s^2 / (s^2 + lambda)) U^T``, so each token's leave-one-out residual is
    its residual divided by ``1 - H_ii``: every penalty is scored without refitting.
    """
    n = len(y)
    scale = float(np.mean(s**2)) if s.size else 1.0
    best, best_error = np.inf, np.inf
    for relative in RIDGE_PENALTIES:
        shrink = np.zeros_like(s) if np.isinf(relative) else s**2 / (s**2 + relative * scale)
        fitted = u @ (shrink[:, None] * (u.T @ y))
        leverage = 1.0 / n + (u**2) @ shrink
        error = float(np.sum(((y - fitted) / np.maximum(1.0 - leverage, 1e-12)[:, None]) ** 2))
        if error < best_error:  # ties keep the smaller penalty
            best, best_error = relative, error
    return best
