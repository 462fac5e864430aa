"""Rectified-flow core in pure torch: path, minibatch coupling and ODE solver."""

from ._coupling import ot_pairing, ot_pairing_grouped, population_ot_partners, random_pairing, transport_cost
from ._path import LinearPath, PathSample, sample_flow_time
from ._solver import SOLVER_METHODS, ODESolver

__all__ = [
    "LinearPath",
    "ODESolver",
    "PathSample",
    "SOLVER_METHODS",
    "ot_pairing",
    "ot_pairing_grouped",
    "population_ot_partners",
    "random_pairing",
    "sample_flow_time",
    "transport_cost",
]
