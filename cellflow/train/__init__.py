"""Training: options, the groups of training cells, the Lightning training plan of the flow, and reflow."""

from ._config import COUPLINGS, PRECISIONS, FlowTrainingConfig, ReflowConfig, VAETrainingConfig
from ._design import TrainingDesign, build_training_design
from ._fit import fit_flow_plan
from ._flow import fit_latent_arithmetic, flow_loss, flow_pairs, reflow, resolve_coupling, train_flow, training_plan
from ._gene_offsets import (
    COMBINATION_SCALES,
    PRIOR_STRENGTHS,
    choose_combination_scale,
    choose_prior_strength,
    fit_gene_offsets,
    gene_offsets_from_cells,
)
from ._groups import GroupIndex
from ._plan import FlowTrainingPlan, GroupBatches
from ._validation import check_validation_split, split_validation_conditions, validation_split

__all__ = [
    "COMBINATION_SCALES",
    "COUPLINGS",
    "PRECISIONS",
    "PRIOR_STRENGTHS",
    "FlowTrainingConfig",
    "FlowTrainingPlan",
    "GroupBatches",
    "GroupIndex",
    "ReflowConfig",
    "TrainingDesign",
    "VAETrainingConfig",
    "build_training_design",
    "check_validation_split",
    "choose_combination_scale",
    "choose_prior_strength",
    "fit_flow_plan",
    "fit_gene_offsets",
    "fit_latent_arithmetic",
    "flow_loss",
    "flow_pairs",
    "gene_offsets_from_cells",
    "reflow",
    "resolve_coupling",
    "split_validation_conditions",
    "train_flow",
    "training_plan",
    "validation_split",
]
