"""Simple baselines that deep perturbation models must beat.

Every baseline answers the same question as the model: given a condition and a context
(covariate values), return cells. They work in log-normalised expression
(``log1p(normalize_total(1e4))``), the space in which predictions are scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..metrics import log_normalize
from ..pp._setup import get_setup, setup_conditions

if TYPE_CHECKING:
    from anndata import AnnData


class Baseline:
    """Shared fitting logic: log-normalised cells indexed by (condition, context).

    Subclasses implement :meth:`predict`.
    """

    name = "baseline"

    def fit(self, adata: AnnData) -> Baseline:
        """Index the training cells of ``adata`` (registered with :func:`cellflow.pp.setup`)."""
        setup = get_setup(adata)
        self.setup = setup
        matrix = adata.layers[setup.layer] if setup.layer else adata.X
        self.expression = log_normalize(matrix) if setup.counts else np.asarray(matrix, dtype=np.float64)
        conditions = setup_conditions(adata, setup)
        self.labels = np.array([c.label(setup.control, setup.combo_sep) for c in conditions])
        keys = list(setup.covariate_keys)
        self.contexts = (
            adata.obs[keys].astype(str).agg("|".join, axis=1).to_numpy() if keys else np.full(adata.n_obs, "")
        )
        self.covariate_keys = keys
        return self

    def _context(self, covariates: Mapping[str, str] | None) -> str:
        covariates = dict(covariates or {})
        missing = [k for k in self.covariate_keys if k not in covariates]
        if missing:
            raise ValueError(f"covariates must give {missing}.")
        return "|".join(str(covariates[k]) for k in self.covariate_keys)

    def _cells(self, label: str, context: str) -> np.ndarray:
        return np.flatnonzero((self.labels == label) & (self.contexts == context))

    def _control_cells(self, context: str) -> np.ndarray:
        rows = self._cells(self.setup.control, context)
        if len(rows) == 0:
            raise ValueError(f"No control cells in context {context!r}.")
        return rows

    def _tokens(self, condition: str) -> list[str]:
        if condition == self.setup.control:
            return []
        return sorted(t.strip() for t in condition.split(self.setup.combo_sep))

    def _label(self, condition: str) -> str:
        tokens = self._tokens(condition)
        return self.setup.combo_sep.join(tokens) if tokens else self.setup.control

    def predict(
        self, condition: str, *, covariates: Mapping[str, str] | None = None, n_cells: int = 500, seed: int = 0
    ) -> np.ndarray:
        """``n_cells x genes`` log-normalised predicted cells of ``condition`` in the context."""
        raise NotImplementedError


class ControlBaseline(Baseline):
    """No change: predicts the control cells of the context."""

    name = "control"

    def predict(self, condition, *, covariates=None, n_cells=500, seed=0):  # noqa: D102
        rows = self._control_cells(self._context(covariates))
        return self.expression[np.random.default_rng(seed).choice(rows, n_cells)]


class PerturbationMeanBaseline(Baseline):
    """The measured cells of a seen condition (in the context): an upper reference for seen conditions."""

    name = "perturbation_mean"

    def predict(self, condition, *, covariates=None, n_cells=500, seed=0):  # noqa: D102
        rows = self._cells(self._label(condition), self._context(covariates))
        if len(rows) == 0:
            raise ValueError(f"{condition!r} was not measured in this context; this baseline only repeats seen data.")
        return self.expression[np.random.default_rng(seed).choice(rows, n_cells)]


class AdditiveBaseline(Baseline):
    """Control cells shifted by the sum of the single perturbations' mean effects.

    For ``A+B`` in a context: ``control cells + (mean(A) - mean(control)) + (mean(B) -
    mean(control))``, in log-normalised expression, clipped at 0. A token whose single
    perturbation was not measured in the context contributes nothing (``missing_singles``
    counts these, so reports can say when the baseline is incomplete).
    """

    name = "additive"

    def fit(self, adata: AnnData) -> AdditiveBaseline:  # noqa: D102
        super().fit(adata)
        self.missing_singles: dict[str, list[str]] = {}
        return self

    def predict(self, condition, *, covariates=None, n_cells=500, seed=0):  # noqa: D102
        context = self._context(covariates)
        controls = self._control_cells(context)
        control_mean = self.expression[controls].mean(axis=0)
        shift = np.zeros_like(control_mean)
        for token in self._tokens(condition):
            rows = self._cells(token, context)
            if len(rows) == 0:
                self.missing_singles.setdefault(condition, []).append(token)
                continue
            shift += self.expression[rows].mean(axis=0) - control_mean
        cells = self.expression[np.random.default_rng(seed).choice(controls, n_cells)] + shift
        return np.clip(cells, 0.0, None)


class TrainingMeanBaseline(Baseline):
    """The average perturbation: control cells shifted by the mean change of every perturbed training condition.

    For any condition in a context: ``control cells + mean over the perturbed training
    conditions c of (mean(c) - mean(control))`` in that context (over all contexts when the
    context has none), in log-normalised expression, clipped at 0. It knows nothing about the
    condition asked for, which is why it is the bar for unseen single perturbations: a model
    that predicts an unseen gene no better than the average effect has learnt nothing about
    that gene (Ahlmann-Eltze, Huber and Anders, Nat Methods 2025).
    """

    name = "training_mean"

    def fit(self, adata: AnnData) -> TrainingMeanBaseline:  # noqa: D102
        super().fit(adata)
        changes: dict[str, list[np.ndarray]] = {}
        for context in np.unique(self.contexts):
            controls = self._cells(self.setup.control, context)
            if len(controls) == 0:
                continue
            control_mean = self.expression[controls].mean(axis=0)
            for label in np.unique(self.labels[(self.contexts == context) & (self.labels != self.setup.control)]):
                change = self.expression[self._cells(label, context)].mean(axis=0) - control_mean
                changes.setdefault(context, []).append(change)
        if not changes:
            raise ValueError("TrainingMeanBaseline needs perturbed training cells in a context with control cells.")
        self.mean_change = {context: np.mean(c, axis=0) for context, c in changes.items()}
        self.overall_change = np.mean([c for cs in changes.values() for c in cs], axis=0)
        return self

    def predict(self, condition, *, covariates=None, n_cells=500, seed=0):  # noqa: D102
        context = self._context(covariates)
        controls = self._control_cells(context)
        shift = self.mean_change.get(context, self.overall_change)
        return np.clip(self.expression[np.random.default_rng(seed).choice(controls, n_cells)] + shift, 0.0, None)


class CellMeanBaseline(Baseline):
    """The Virtual Cell Challenge's baseline: every cell is the mean of the training pseudobulks.

    In a context: the mean over every training condition (the control included) of its mean
    log-normalised expression, repeated ``n_cells`` times (constant cells, no spread), as
    ``cell_eval.build_base_mean_adata`` builds it; over all contexts when the context has
    no training cells. The challenge's combined score is normalised against it
    (:func:`cellflow.metrics.vcc_score`).
    """

    name = "cell_mean"

    def fit(self, adata: AnnData) -> CellMeanBaseline:  # noqa: D102
        super().fit(adata)
        pseudobulks: dict[str, list[np.ndarray]] = {}
        for context in np.unique(self.contexts):
            for label in np.unique(self.labels[self.contexts == context]):
                pseudobulks.setdefault(context, []).append(self.expression[self._cells(label, context)].mean(axis=0))
        self.mean = {context: np.mean(bulks, axis=0) for context, bulks in pseudobulks.items()}
        self.overall = np.mean([b for bulks in pseudobulks.values() for b in bulks], axis=0)
        return self

    def predict(self, condition, *, covariates=None, n_cells=500, seed=0):  # noqa: D102
        profile = self.mean.get(self._context(covariates), self.overall)
        return np.tile(profile, (n_cells, 1))


def available_baselines() -> dict[str, type[Baseline]]:
    """The baselines by name."""
    classes = (ControlBaseline, PerturbationMeanBaseline, AdditiveBaseline, TrainingMeanBaseline, CellMeanBaseline)
    return {cls.name: cls for cls in classes}


def conditions_frame(adata: AnnData) -> pd.DataFrame:
    """Canonical condition label and context of every cell (helper for splits and scoring)."""
    setup = get_setup(adata)
    conditions = setup_conditions(adata, setup)
    frame = pd.DataFrame(
        {"condition": [c.label(setup.control, setup.combo_sep) for c in conditions]}, index=adata.obs_names
    )
    for key in setup.covariate_keys:
        frame[key] = adata.obs[key].astype(str).to_numpy()
    return frame
