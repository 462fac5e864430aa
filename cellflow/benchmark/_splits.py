"""Reproducible held-out splits of perturbation screens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Split:
    """Conditions held out of training.

    Attributes
    ----------
    held_out
        Canonical labels of the held-out conditions.
    train_mask
        Boolean mask over cells: ``True`` for training cells.
    kind
        For each held-out condition, a short description (``"combination (both singles seen)"``, ...).
    """

    held_out: list[str]
    train_mask: np.ndarray
    kind: dict[str, str]


def split_combinations(
    frame: pd.DataFrame,
    *,
    n_combinations: int = 4,
    n_singles: int = 0,
    seed: int = 0,
    control: str = "control",
    sep: str = "+",
) -> Split:
    """Hold out combinations whose single perturbations are all measured, and a few singles.

    The held-out singles are chosen among tokens that do not appear in any held-out
    combination, so every held-out combination keeps both of its singles in training.

    Parameters
    ----------
    frame
        One row per cell with a ``condition`` column of canonical labels
        (:func:`cellflow.benchmark.conditions_frame`).
    n_combinations, n_singles
        How many of each to hold out (fewer if fewer qualify).
    seed
        Seed of the random choice.
    control, sep
        Control label and token separator.
    """
    rng = np.random.default_rng(seed)
    conditions = sorted(set(frame["condition"]) - {control})
    singles = [c for c in conditions if sep not in c]
    combos = [c for c in conditions if sep in c and all(t in singles for t in c.split(sep))]
    held_combos = list(rng.choice(combos, min(n_combinations, len(combos)), replace=False)) if combos else []
    used = {t for c in held_combos for t in c.split(sep)}
    free_singles = [s for s in singles if s not in used]
    held_singles = list(rng.choice(free_singles, min(n_singles, len(free_singles)), replace=False)) if n_singles else []
    held = [str(c) for c in held_combos + held_singles]
    kind = {c: "combination (both singles seen)" for c in held_combos} | {s: "single" for s in held_singles}
    return Split(held, ~frame["condition"].isin(held).to_numpy(), kind)
