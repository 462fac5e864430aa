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
from ._latent import LatentArithmeticBaseline  # noqa: E402
from ._linear import LinearBaseline  # noqa: E402

__all__ += ["LatentArithmeticBaseline", "LinearBaseline"]
from ._splits import split_combinations_by_seen, split_covariate_transfer, split_singles  # noqa: E402

__all__ += ["split_combinations_by_seen", "split_covariate_transfer", "split_singles"]
from ._run import run_benchmark  # noqa: E402

__all__ += ["run_benchmark"]
