"""Helpers of the plot tests: find artists by label, log-normalise by hand."""

from __future__ import annotations

import numpy as np


def collection(ax, label: str):
    """The collection (scatter or band) of ``ax`` with this legend label."""
    found = [c for c in ax.collections if c.get_label() == label]
    assert len(found) == 1, (
        f"expected one collection labelled {label!r}, found {[c.get_label() for c in ax.collections]}"
    )
    return found[0]


def curves(ax) -> dict:
    """The labelled lines of ``ax`` (helper lines such as a marker of reflow's start carry no label)."""
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def log_normalised(counts):
    """scanpy's normalize_total(target_sum=1e4) and log1p, by hand."""
    x = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    x = x.astype(float)
    totals = x.sum(axis=1, keepdims=True)
    return np.log1p(x / np.where(totals > 0, totals, 1) * 1e4)
