"""Baselines, splits, scoring and the benchmark harness."""

from ._baselines import (
    AdditiveBaseline,
    Baseline,
    ControlBaseline,
    PerturbationMeanBaseline,
    available_baselines,
    conditions_frame,
)
from ._demo import run_demo
from ._harness import score_held_out, summary_table
from ._scoring import ConditionScorer
from ._splits import Split, split_combinations

__all__ = [
    "AdditiveBaseline",
    "Baseline",
    "ConditionScorer",
    "ControlBaseline",
    "PerturbationMeanBaseline",
    "Split",
    "available_baselines",
    "conditions_frame",
    "run_demo",
    "score_held_out",
    "split_combinations",
    "summary_table",
]
