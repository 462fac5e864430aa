"""Lightning modules and batch sampling for training the flow."""

from ._design import TrainingDesign, build_training_design
from ._flow_module import FlowModule, FlowTrainingConfig, GroupBatches, GroupTable
from ._groups import GroupIndex

__all__ = [
    "FlowModule",
    "FlowTrainingConfig",
    "GroupBatches",
    "GroupIndex",
    "GroupTable",
    "TrainingDesign",
    "build_training_design",
]
