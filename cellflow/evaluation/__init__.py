"""Baselines, splits, scoring and the benchmark harness."""

from ._baselines import (
    AdditiveBaseline,
    Baseline,
    CellMeanBaseline,
    ControlBaseline,
    PerturbationMeanBaseline,
    TrainingMeanBaseline,
    available_baselines,
    conditions_frame,
)
from ._demo import run_demo
from ._export import export_cell_eval
from ._harness import score_held_out, score_reconstruction, summary_table
from ._latent import LatentArithmeticBaseline
from ._linear import LinearBaseline
from ._run import run_benchmark
from ._scoring import ConditionScorer
from ._splits import (
    Split,
    split_combinations,
    split_combinations_by_seen,
    split_covariate_transfer,
    split_singles,
)

__all__ = [
    "AdditiveBaseline",
    "Baseline",
    "ConditionScorer",
    "ControlBaseline",
    "LatentArithmeticBaseline",
    "LinearBaseline",
    "PerturbationMeanBaseline",
    "Split",
    "CellMeanBaseline",
    "TrainingMeanBaseline",
    "available_baselines",
    "conditions_frame",
    "export_cell_eval",
    "run_benchmark",
    "run_demo",
    "score_held_out",
    "score_reconstruction",
    "split_combinations",
    "split_combinations_by_seen",
    "split_covariate_transfer",
    "split_singles",
    "summary_table",
]
