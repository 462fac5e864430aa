"""Lightning modules and batch sampling for training the flow."""

from ._design import TrainingDesign, build_training_design
from ._fit import fit_flow_module
from ._flow_module import FlowModule, FlowTrainingConfig, GroupBatches, GroupTable, TrajectoryFlowModule
from ._groups import GroupIndex
from ._reflow import flow_pairs
from ._trajectories import (
    TrajectoryIndex,
    batched_assignment,
    chain_states,
    chain_trajectories,
    time_resolved_shifts,
)

__all__ = [
    "FlowModule",
    "FlowTrainingConfig",
    "GroupBatches",
    "GroupIndex",
    "GroupTable",
    "TrainingDesign",
    "TrajectoryFlowModule",
    "TrajectoryIndex",
    "batched_assignment",
    "build_training_design",
    "chain_states",
    "chain_trajectories",
    "fit_flow_module",
    "flow_pairs",
    "time_resolved_shifts",
]
