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
    contexts
        For covariate transfer: the contexts (``{covariate: value}``) in which each held-out
        condition is held out; ``None`` means every context where it was measured.
    """

    held_out: list[str]
    train_mask: np.ndarray
    kind: dict[str, str]
    contexts: dict[str, list[dict[str, str]]] | None = None


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
        (:func:`cellflow.evaluation.conditions_frame`).
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


def _labels(frame: pd.DataFrame, control: str, sep: str) -> tuple[list[str], list[str]]:
    if "condition" not in frame.columns:
        raise KeyError("frame needs a 'condition' column (use cellflow.evaluation.conditions_frame).")
    conditions = sorted(set(frame["condition"]) - {control})
    return [c for c in conditions if sep not in c], [c for c in conditions if sep in c]


def _choose(rng: np.random.Generator, options: list[str], n: int) -> list[str]:
    return [str(c) for c in rng.choice(options, min(n, len(options)), replace=False)] if options and n > 0 else []


def split_combinations_by_seen(
    frame: pd.DataFrame, *, n_per_kind: int = 2, seed: int = 0, control: str = "control", sep: str = "+"
) -> Split:
    """Hold out combinations, grouped by how many of their singles are measured (all / some / none).

    Up to ``n_per_kind`` combinations of each kind are held out; every single stays in
    training, so "seen" means "measured as a single in the training data".

    Parameters
    ----------
    frame
        One row per cell with a ``condition`` column of canonical labels.
    n_per_kind
        How many combinations of each kind to hold out (fewer if fewer exist).
    seed
        Seed of the random choice.
    control, sep
        Control label and token separator.
    """
    rng = np.random.default_rng(seed)
    singles, combos = _labels(frame, control, sep)
    measured = set(singles)
    names = {0: "neither", 1: "one", 2: "both"}

    def seen(combo: str) -> int:  # 2: all singles measured, 1: some, 0: none
        tokens = combo.split(sep)
        n = sum(t in measured for t in tokens)
        return 2 if n == len(tokens) else (0 if n == 0 else 1)

    kind = {}
    for n_seen in (2, 1, 0):
        for combo in _choose(rng, [c for c in combos if seen(c) == n_seen], n_per_kind):
            kind[combo] = f"combination ({names[n_seen]} seen)"
    held = list(kind)
    return Split(held, ~frame["condition"].isin(held).to_numpy(), kind)


def split_singles(
    frame: pd.DataFrame,
    *,
    n_singles: int = 3,
    seed: int = 0,
    control: str = "control",
    sep: str = "+",
    drop_combinations: bool = True,
) -> Split:
    """Hold out single perturbations (an unseen gene).

    Parameters
    ----------
    frame
        One row per cell with a ``condition`` column of canonical labels.
    n_singles
        How many singles to hold out (fewer if fewer exist).
    seed
        Seed of the random choice.
    control, sep
        Control label and token separator.
    drop_combinations
        Also remove from training every combination containing a held-out single (they
        would reveal its effect); they are not scored.
    """
    rng = np.random.default_rng(seed)
    singles, combos = _labels(frame, control, sep)
    held = _choose(rng, singles, n_singles)
    removed = set(held)
    if drop_combinations:
        removed |= {c for c in combos if set(c.split(sep)) & set(held)}
    return Split(held, ~frame["condition"].isin(removed).to_numpy(), {s: "single" for s in held})


def split_covariate_transfer(
    frame: pd.DataFrame,
    *,
    covariate_key: str,
    n_perturbations: int = 3,
    seed: int = 0,
    control: str = "control",
) -> Split:
    """Hold out perturbations in one context each while they stay in training in the others.

    Parameters
    ----------
    frame
        One row per cell with ``condition`` and ``covariate_key`` columns.
    covariate_key
        The covariate that defines the context (e.g. ``"cell_type"``).
    n_perturbations
        How many perturbations to hold out (each in one randomly chosen context).
    seed
        Seed of the random choices.
    control
        Control label (controls are never held out: they are the source of predictions).
    """
    if covariate_key not in frame.columns:
        raise KeyError(f"covariate_key={covariate_key!r} is not a column of frame; columns: {list(frame.columns)}.")
    rng = np.random.default_rng(seed)
    values = frame[covariate_key].astype(str).to_numpy()
    perturbed = frame[frame["condition"] != control]
    where = perturbed.groupby("condition")[covariate_key].agg(lambda v: sorted(set(map(str, v))))
    candidates = sorted(c for c, ctx in where.items() if len(ctx) >= 2)
    if not candidates:
        raise ValueError(f"No perturbation is measured in two or more values of {covariate_key!r}.")
    held = _choose(rng, candidates, n_perturbations)
    train = np.ones(len(frame), dtype=bool)
    contexts, kind = {}, {}
    for condition in held:
        value = str(rng.choice(where[condition]))
        contexts[condition] = [{covariate_key: value}]
        kind[condition] = f"held out in {covariate_key}={value}"
        train &= ~((frame["condition"].to_numpy() == condition) & (values == value))
    return Split(held, train, kind, contexts)
