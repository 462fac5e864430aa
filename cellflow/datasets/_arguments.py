"""Validation of the simulator's arguments, with messages that say what to change."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERTURBATION_TYPES = ("knockdown", "activation", "mixed")
DOSE_COMBINATIONS = ("shared", "all")
DEFAULT_TIME_RANGE = (2.0, 48.0)  # hours: first and last of the default measurement times


def check_arguments(params: dict) -> tuple[int, ...]:
    """Validate the arguments; returns the combination sizes."""
    for name in ("n_cells", "n_genes", "n_cell_types", "n_timepoints", "n_perturbations"):
        if not isinstance(params[name], int | np.integer) or params[name] < 1:
            raise ValueError(f"{name}={params[name]!r} must be a positive integer.")
    for name in ("n_combinations", "n_programs", "seed"):
        if not isinstance(params[name], int | np.integer) or params[name] < 0:
            raise ValueError(f"{name}={params[name]!r} must be a non-negative integer.")
    if params["n_perturbations"] > params["n_genes"]:
        raise ValueError(f"n_perturbations={params['n_perturbations']} exceeds n_genes={params['n_genes']}.")
    raw_sizes = params["combination_size"]
    sizes = (raw_sizes,) if isinstance(raw_sizes, int | np.integer) else tuple(raw_sizes)
    if not sizes or any(not isinstance(s, int | np.integer) or s < 2 for s in sizes):
        raise ValueError(f"combination_size={raw_sizes!r} must be an integer >= 2 or a sequence of them.")
    if params["perturbation_type"] not in PERTURBATION_TYPES:
        raise ValueError(f"perturbation_type={params['perturbation_type']!r}; choose one of {PERTURBATION_TYPES}.")
    if params["dose_combinations"] not in DOSE_COMBINATIONS:
        raise ValueError(f"dose_combinations={params['dose_combinations']!r}; choose one of {DOSE_COMBINATIONS}.")
    doses = np.asarray(params["doses"], dtype=float) if not isinstance(params["doses"], str) else np.zeros(0)
    if doses.ndim != 1 or doses.size == 0 or not (np.isfinite(doses) & (doses > 0)).all():
        raise ValueError(f"doses={params['doses']!r} must be a sequence of distinct positive numbers, e.g. (0.5, 1.0).")
    if np.unique(doses).size != doses.size:
        raise ValueError(f"doses={params['doses']!r} repeats a dose level.")
    if not 0.0 < params["control_fraction"] < 1.0:
        raise ValueError(f"control_fraction={params['control_fraction']!r} must lie strictly between 0 and 1.")
    library = params["library_size"]
    median, sigma = library if isinstance(library, tuple | list) and len(library) == 2 else (library, 0.0)
    if not isinstance(median, int | float) or not median > 0 or not sigma >= 0:
        raise ValueError(f"library_size={library!r} must be a positive median or (median > 0, log-sd >= 0).")
    if not 0.0 < params["regulator_fraction"] <= 1.0 or params["regulators_per_gene"] < 0:
        raise ValueError("regulator_fraction must lie in (0, 1] and regulators_per_gene must be non-negative.")
    if params["cell_type_scale"] < 0 or params["program_scale"] < 0:
        raise ValueError("cell_type_scale and program_scale must be non-negative.")
    return tuple(int(s) for s in sizes)


def resolve_times(n_timepoints: int, times: Sequence[float] | None) -> np.ndarray:
    """Measurement times in hours, ascending; ``inf`` stands for the steady state."""
    if times is None:
        if n_timepoints == 1:
            return np.array([np.inf])
        return np.round(np.geomspace(*DEFAULT_TIME_RANGE, n_timepoints), 1)
    resolved = np.asarray(times, dtype=float)
    if resolved.ndim != 1 or resolved.size == 0 or (resolved <= 0).any() or np.isnan(resolved).any():
        raise ValueError(f"times={times!r} must be a non-empty sequence of positive hours (inf for steady state).")
    if np.unique(resolved).size != resolved.size:
        raise ValueError(f"times={times!r} repeats a time point.")
    if n_timepoints not in (1, resolved.size):
        raise ValueError(f"n_timepoints={n_timepoints} disagrees with {resolved.size} times; give one or the other.")
    return np.sort(resolved)
