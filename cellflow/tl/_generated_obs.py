"""The ``obs`` of cells made by :func:`~cellflow.tl.generate`, for any range of rows (in memory or chunk by chunk)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._constants import LATENT_KEY


def with_obs(blocks, obs: ObsPlan):
    """``(X, obs, obsm)`` chunks for the writer: each block with the obs of its rows."""
    start = 0
    for x, z in blocks:
        stop = start + x.shape[0]
        yield x, obs.rows(start, stop), {LATENT_KEY: z}
        start = stop


def obs_row(cond, i: int, t: float, setup) -> tuple[str, str, float, int]:
    """Label, dose label, time point and condition index of one condition's cells at one time point."""
    dose_label = setup.combo_sep.join(f"{d:g}" for d in cond.doses) if cond.tokens else "0"
    return cond.label(setup.control, setup.combo_sep), dose_label, t, i


class ObsPlan:
    """The ``obs`` of any range of generated rows, with the categories of the whole result.

    Rows run through ``rows`` (condition x time point), ``n_cells`` each; a row's name is its
    label and its position. Built for a range, a chunk written to disk gets the same table as
    those rows of the result in memory.
    """

    def __init__(self, rows, n_cells: int, setup, covariate_keys, context_values, over_time: bool) -> None:
        self.n_cells, self.setup, self.over_time = n_cells, setup, over_time
        self.labels, self.doses, self.times, self.conditions = (np.array(v) for v in zip(*rows))
        self.covariates = dict(zip(covariate_keys, context_values))

    def rows(self, start: int, stop: int) -> pd.DataFrame:
        """``obs`` of rows ``start`` to ``stop``."""
        position = np.arange(start, stop)
        group = position // self.n_cells
        labels = self.labels[group]
        frame = pd.DataFrame({self.setup.perturbation_key: _categorical(labels, self.labels)})
        for key, value in self.covariates.items():
            frame[key] = pd.Categorical([value] * len(labels), categories=[value])
        frame[self.setup.dose_key or "dose"] = _categorical(self.doses[group], self.doses)
        if self.setup.time_key is not None:
            frame[self.setup.time_key] = self.times[group].astype(float)
        if self.over_time:  # a trajectory's cells share its id at every time point
            frame["trajectory"] = (self.conditions[group] * self.n_cells + position % self.n_cells).astype(np.int64)
        frame.index = [f"{label}-{i}" for i, label in zip(position, labels)]
        return frame


def _categorical(values: np.ndarray, every: np.ndarray) -> pd.Categorical:
    """``values`` as a categorical whose categories are all of ``every``, sorted (as ``pd.Categorical`` sorts)."""
    return pd.Categorical(values, categories=sorted(set(every.tolist())))
