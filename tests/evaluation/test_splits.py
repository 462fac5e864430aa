"""Held-out splits: reproducible, and holding out what they claim."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellflow.evaluation import (
    Split,
    split_combinations,
    split_combinations_by_seen,
    split_covariate_transfer,
    split_singles,
)


@pytest.fixture
def frame():
    labels = ["control", "A", "B", "C", "D", "A+B", "C+D", "A+X", "B+Y", "X+Y", "Z+W", "A+C"]
    rows = [(lab, ctx) for lab in labels for ctx in ("l1", "l2", "l3") for _ in range(3)]
    return pd.DataFrame(rows, columns=["condition", "cell_type"])


def test_by_seen_groups_combinations_and_keeps_singles(frame):
    split = split_combinations_by_seen(frame, n_per_kind=2, seed=1)
    kinds = pd.Series(split.kind).value_counts().to_dict()
    assert kinds == {"combination (both seen)": 2, "combination (one seen)": 2, "combination (neither seen)": 2}
    for combo, kind in split.kind.items():
        seen = sum(t in {"A", "B", "C", "D"} for t in combo.split("+"))
        assert (
            kind == {2: "combination (both seen)", 1: "combination (one seen)", 0: "combination (neither seen)"}[seen]
        )
    train = set(frame.loc[split.train_mask, "condition"])
    assert not train & set(split.held_out) and {"A", "B", "C", "D", "control"} <= train
    again = split_combinations_by_seen(frame, n_per_kind=2, seed=1)
    assert again.held_out == split.held_out and np.array_equal(again.train_mask, split.train_mask)


def test_singles_drop_their_combinations(frame):
    split = split_singles(frame, n_singles=2, seed=0)
    assert len(split.held_out) == 2 and all("+" not in s for s in split.held_out)
    train = set(frame.loc[split.train_mask, "condition"])
    assert not any(set(c.split("+")) & set(split.held_out) for c in train)
    kept = split_singles(frame, n_singles=2, seed=0, drop_combinations=False)
    assert kept.held_out == split.held_out
    assert set(frame.loc[~kept.train_mask, "condition"]) == set(split.held_out)


def test_covariate_transfer_holds_out_one_context(frame):
    split = split_covariate_transfer(frame, covariate_key="cell_type", n_perturbations=3, seed=2)
    assert isinstance(split, Split) and len(split.held_out) == 3
    for condition in split.held_out:
        (context,) = split.contexts[condition]
        in_condition = frame["condition"] == condition
        held = in_condition & (frame["cell_type"] == context["cell_type"])
        assert not split.train_mask[held.to_numpy()].any()
        assert split.train_mask[(in_condition & ~held).to_numpy()].all()  # seen in the other lines
    assert split.train_mask[(frame["condition"] == "control").to_numpy()].all()
    with pytest.raises(KeyError, match="covariate_key"):
        split_covariate_transfer(frame, covariate_key="batch")


def test_split_combinations_unchanged(frame):
    split = split_combinations(frame, n_combinations=2, seed=0)
    assert split.contexts is None and all(k == "combination (both singles seen)" for k in split.kind.values())
