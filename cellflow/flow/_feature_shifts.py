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

MAX_COMPONENTS = 512
"""Principal components of the features the regression keeps: its cost stays bounded with many tokens and features."""


class FeatureRegression:
    """Ridge regression of the known tokens' values on their features, decomposed once for any number of targets.

    The centred features of the known tokens are reduced to their :data:`MAX_COMPONENTS`
    leading principal axes (exactly when they have no more, else by a randomized SVD with a
    fixed seed, so the result is deterministic); :meth:`predict` then costs two small products
    per target table, whatever its width (``D`` latent dimensions, or every gene for the gene
    offsets), and one decomposition serves every context and every kind of shift.

    Parameters
    ----------
    features
        ``(n_tokens, F)``: every token's feature row.
    known
        ``(n_tokens,)`` boolean: tokens whose value was measured.
    """

    def __init__(self, features: np.ndarray, known: np.ndarray):
        features = np.asarray(features, dtype=np.float64)
        self.known = np.asarray(known, dtype=bool)
        if features.ndim != 2 or features.shape[0] != len(self.known):
            raise ValueError(f"features has shape {features.shape} for {len(self.known)} tokens; need (n_tokens, F).")
        if not np.isfinite(features).all():
            raise ValueError("features holds NaN or infinite values; fill or drop them first.")
        self.axes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # u, s, unknown tokens' scores
        if self.known.sum() < MIN_TOKENS_FOR_REGRESSION or self.known.all():
            return
        x = features[self.known]
        x_mean = x.mean(axis=0)
        u, s, vt = _leading_axes(x - x_mean, MAX_COMPONENTS)
        keep = s > s.max() * 1e-10 if s.size else np.zeros(0, dtype=bool)
        u, s, vt = u[:, keep], s[keep], vt[keep]
        self.axes = (u, s, (features[~self.known] - x_mean) @ vt.T)

    def predict(self, values: np.ndarray) -> tuple[np.ndarray, float]:
        """Fill the rows of unknown tokens with the regression of the known rows (``(n_tokens, D)``).

        Returns
        -------
        values, penalty
            ``values`` (float64) with the unknown rows predicted (known rows unchanged) and the
            penalty chosen, as a multiple of the mean squared singular value of the centred
            features (``inf``: the mean of the known rows, also where fewer than
            :data:`MIN_TOKENS_FOR_REGRESSION` are known or their features do not vary; ``nan``
            when no token is known and nothing is filled).
        """
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or len(values) != len(self.known):
            raise ValueError(f"values has shape {values.shape} for {len(self.known)} tokens; need (n_tokens, D).")
        known = self.known
        if not known.any() or known.all():
            return values, float("nan") if not known.any() else float("inf")
        if not np.isfinite(values[known]).all():
            raise ValueError("The known tokens' values hold NaN or infinite values.")
        y = values[known]
        y_mean = y.mean(axis=0)
        filled = values.copy()
        filled[~known] = y_mean
        if self.axes is None or not self.axes[1].size:
            return filled, float("inf")
        u, s, scores = self.axes
        projected = u.T @ (y - y_mean)  # (k, D), shared by every penalty
        relative = _leave_one_out_penalty(y - y_mean, u, s, projected)
        if np.isfinite(relative):
            # Coefficients V diag(s / (s^2 + lambda)) U^T y, applied to the unknown tokens' centred features.
            weights = s / (s**2 + relative * float(np.mean(s**2)))
            filled[~known] += scores @ (weights[:, None] * projected)
        return filled, relative


def _leading_axes(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` leading singular triplets of ``x`` (all of them when it has at most ``2k``), deterministically.

    Large matrices go through a randomized range finder with two power iterations (Halko et
    al. 2011) seeded by a generator of its own, so the global random state is untouched.
    """
    if min(x.shape) <= 2 * k:
        return np.linalg.svd(x, full_matrices=False)
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(x @ rng.standard_normal((x.shape[1], k + 16)))[0]
    for _ in range(2):
        basis = np.linalg.qr(x @ np.linalg.qr(x.T @ basis)[0])[0]
    u, s, vt = np.linalg.svd(basis.T @ x, full_matrices=False)
    return (basis @ u)[:, :k], s[:k], vt[:k]


def _leave_one_out_penalty(y: np.ndarray, u: np.ndarray, s: np.ndarray, projected: np.ndarray) -> float:
    """The entry of :data:`RIDGE_PENALTIES` with the least leave-one-out squared error (summed over outputs).

    Ridge with an unpenalised intercept is a linear smoother with hat matrix
    ``H = 11^T / n + U diag(s^2 / (s^2 + lambda)) U^T``, so each token's leave-one-out residual is
    its residual divided by ``1 - H_ii``: every penalty is scored without refitting.

    Parameters
    ----------
    y
        ``(n, D)`` centred values of the known tokens.
    u, s
        Left singular vectors ``(n, k)`` and singular values ``(k,)`` of their centred features.
    projected
        ``u.T @ y``.
    """
    n = len(y)
    scale = float(np.mean(s**2))
    best, best_error = np.inf, np.inf
    for relative in RIDGE_PENALTIES:
        shrink = np.zeros_like(s) if np.isinf(relative) else s**2 / (s**2 + relative * scale)
        fitted = u @ (shrink[:, None] * projected)
        leverage = 1.0 / n + (u**2) @ shrink
        error = float(np.sum(((y - fitted) / np.maximum(1.0 - leverage, 1e-12)[:, None]) ** 2))
        if error < best_error:  # ties keep the smaller penalty
            best, best_error = relative, error
    return best
