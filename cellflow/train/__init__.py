"""Lightning modules and batch sampling for training the flow."""

from ._design import TrainingDesign, build_training_design
from ._fit import fit_flow_module
from ._flow_module import FlowModule, FlowTrainingConfig, GroupBatches, GroupTable
from ._groups import GroupIndex
from ._reflow import flow_pairs

__all__ = [
    "FlowModule",
    "FlowTrainingConfig",
    "GroupBatches",
    "GroupIndex",
    "GroupTable",
    "TrainingDesign",
    "build_training_design",
    "fit_flow_module",
    "flow_pairs",
]
