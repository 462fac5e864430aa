"""The flow in pure torch: the flow module, its path, couplings, ODE solver, shifts, gene offsets, control reference."""

from ._coupling import ot_pairing_grouped, population_ot_partners, random_pairing
from ._gene_offsets import GeneOffsets
from ._module import ConditionBatch, FlowModule, SamplingInfo
from ._path import LinearPath, PathSample, sample_flow_time
from ._reference import ControlReference
from ._solver import ODESolver
from ._token_shift import TokenShifts, time_resolved_shifts
from ._trajectories import batched_assignment, chain_states, chain_trajectories

__all__ = [
    "ConditionBatch",
    "ControlReference",
    "FlowModule",
    "GeneOffsets",
    "LinearPath",
    "ODESolver",
    "PathSample",
    "SamplingInfo",
    "TokenShifts",
    "batched_assignment",
    "chain_states",
    "chain_trajectories",
    "ot_pairing_grouped",
    "population_ot_partners",
    "random_pairing",
    "sample_flow_time",
    "time_resolved_shifts",
]
