"""The experimental design of a simulated screen: which genes are perturbed, how, and in how many cells."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from ._grn import GeneRegulatoryNetwork

_KNOCKDOWN_EFFICACY = (0.75, 0.95)  # uniform range: fraction of production removed at dose 1
_KNOCKDOWN_FLOOR = 0.02  # no knockdown removes all production
_ACTIVATION_FOLD = (4.0, 0.4, 1.5)  # lognormal median, log-sd, minimum: production fold at dose 1
_BASE_WEIGHT = 0.005  # chance weight of a combination whose members share no downstream genes
_MAX_ENUMERATED = 50_000  # combinations of one size listed explicitly when choosing among them


@dataclass(frozen=True)
class PerturbationPanel:
    """The perturbed genes and how strongly each perturbation acts.

    Attributes
    ----------
    targets
        ``(P,)`` gene index of each single perturbation.
    modes
        ``(P,)`` ``"knockdown"`` or ``"activation"``.
    strengths
        ``(P,)`` knockdown efficacy (fraction of production removed at dose 1) or activation
        fold (production multiplier at dose 1).
    """

    targets: np.ndarray
    modes: np.ndarray
    strengths: np.ndarray

    def factor(self, member: int, dose: float) -> float:
        """Multiplier on the target's production for perturbation ``member`` at ``dose``."""
        if self.modes[member] == "knockdown":
            return max(1.0 - self.strengths[member] * dose, _KNOCKDOWN_FLOOR)
        return 1.0 + (self.strengths[member] - 1.0) * dose


def screen_regulators(network: GeneRegulatoryNetwork, threshold: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Knock down every regulator that has targets, as a pilot screen to plan the real one.

    Returns the regulators (gene indices) and, for each, a boolean ``(n_cell_types * G)`` mask of
    other genes whose log expression proportion moves by more than ``threshold``.
    """
    regulators = np.sort(network.regulators[network.n_targets > 0])
    n_types, n_genes = network.basal.shape
    factor = np.ones((regulators.size + 1, n_genes))  # row 0: control
    factor[np.arange(1, regulators.size + 1), regulators] = 1.0 - np.mean(_KNOCKDOWN_EFFICACY)
    basal = np.repeat(network.basal, len(factor), axis=0)
    state = network.steady_state(basal, np.tile(factor, (n_types, 1)))
    log_prop = np.log(state / state.sum(axis=1, keepdims=True)).reshape(n_types, len(factor), n_genes)
    change = np.abs(log_prop[:, 1:] - log_prop[:, :1])  # (types, regulators, G)
    change[:, np.arange(regulators.size), regulators] = 0.0  # the target itself moves trivially
    return regulators, (change > threshold).transpose(1, 0, 2).reshape(regulators.size, -1)


def choose_panel(
    rng: np.random.Generator,
    network: GeneRegulatoryNetwork,
    n_perturbations: int,
    perturbation_type: str,
    screened: np.ndarray,
    affected: np.ndarray,
) -> PerturbationPanel:
    """Pick targets: screened regulators, favouring broad effects as screens do; other genes only to fill up."""
    reach = affected.sum(axis=1) + 1.0
    n_first = min(n_perturbations, screened.size)
    first = rng.choice(screened, size=n_first, replace=False, p=reach / reach.sum())
    others = np.setdiff1d(np.arange(network.n_genes), screened)
    targets = np.sort(np.concatenate([first, rng.choice(others, n_perturbations - n_first, replace=False)]))
    if perturbation_type == "mixed":
        modes = np.where(rng.random(targets.size) < 0.5, "knockdown", "activation")
    else:
        modes = np.full(targets.size, perturbation_type)
    efficacy = rng.uniform(*_KNOCKDOWN_EFFICACY, size=targets.size)
    median, spread, minimum = _ACTIVATION_FOLD
    fold = np.maximum(rng.lognormal(np.log(median), spread, size=targets.size), minimum)
    strengths = np.where(modes == "knockdown", efficacy, fold)
    return PerturbationPanel(targets=targets, modes=modes.astype(object), strengths=strengths)


def choose_combinations(
    rng: np.random.Generator, overlap: np.ndarray, n_combinations: int, sizes: tuple[int, ...]
) -> list[tuple[int, ...]]:
    """Draw distinct sets of single perturbations (indices into the panel), sizes cycling through ``sizes``.

    Sets whose members have overlapping downstream effects (``overlap``, ``(P, P)``) are favoured,
    as in screens that pick pairs expected to interact; every set keeps a chance.
    """
    n_singles = overlap.shape[0]
    wanted = {size: 0 for size in sizes}
    for i in range(n_combinations):
        wanted[sizes[i % len(sizes)]] += 1
    chosen: list[tuple[int, ...]] = []
    for size, n in wanted.items():
        available = math.comb(n_singles, size)
        if n > available:
            raise ValueError(
                f"n_combinations={n_combinations} asks for {n} combinations of size {size}, but "
                f"n_perturbations={n_singles} allows only {available}; ask for fewer or add perturbations."
            )
        if n == 0:
            continue
        if available > _MAX_ENUMERATED:  # too many to list: draw members one at a time, skip repeats
            drawn: set[tuple[int, ...]] = set()
            while len(drawn) < n:
                drawn.add(_draw_set(rng, overlap, size))
            chosen += sorted(drawn)
            continue
        pool = np.array(list(itertools.combinations(range(n_singles), size)))
        pairs = np.array(list(itertools.combinations(range(size), 2)))
        weight = overlap[pool[:, pairs[:, 0]], pool[:, pairs[:, 1]]].mean(axis=1) + _BASE_WEIGHT
        picked = np.sort(rng.choice(len(pool), size=n, replace=False, p=weight / weight.sum()))
        chosen += [tuple(int(m) for m in pool[i]) for i in picked]
    return chosen


def _draw_set(rng: np.random.Generator, overlap: np.ndarray, size: int) -> tuple[int, ...]:
    members = [int(rng.integers(overlap.shape[0]))]
    while len(members) < size:
        weight = overlap[members].mean(axis=0) + _BASE_WEIGHT
        weight[members] = 0.0
        members.append(int(rng.choice(overlap.shape[0], p=weight / weight.sum())))
    return tuple(sorted(members))


def effect_overlap(affected: np.ndarray) -> np.ndarray:
    """Jaccard overlap ``(P, P)`` of the genes each perturbation moves (rows of ``affected``)."""
    a = affected.astype(float)
    shared = a @ a.T
    union = a.sum(axis=1)[:, None] + a.sum(axis=1)[None, :] - shared
    return np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)


def plan_perturbations(
    rng: np.random.Generator,
    network: GeneRegulatoryNetwork,
    *,
    n_perturbations: int,
    n_combinations: int,
    sizes: tuple[int, ...],
    doses: tuple[float, ...],
    dose_combinations: str,
    perturbation_type: str,
) -> tuple[PerturbationPanel, list[tuple[tuple[int, ...], tuple[float, ...]]], np.ndarray]:
    """Plan the screen: the panel, every perturbation as (panel members, doses), and production factors.

    The first perturbation is the control (no members). ``factor`` is ``(K, G)``: the multiplier on
    each gene's production under each perturbation.
    """
    screened, affected = screen_regulators(network)
    panel = choose_panel(rng, network, n_perturbations, perturbation_type, screened, affected)
    panel_affected = np.zeros((n_perturbations, affected.shape[1]), dtype=bool)
    is_screened = np.isin(panel.targets, screened)
    panel_affected[is_screened] = affected[np.searchsorted(screened, panel.targets[is_screened])]
    members = [(i,) for i in range(n_perturbations)]
    members += choose_combinations(rng, effect_overlap(panel_affected), n_combinations, sizes)
    perturbations = [((), ())] + [(m, d) for m in members for d in dose_assignments(len(m), doses, dose_combinations)]
    factor = np.ones((len(perturbations), network.n_genes))
    for row, (group, group_doses) in enumerate(perturbations):
        for member, dose in zip(group, group_doses):
            factor[row, panel.targets[member]] = panel.factor(member, dose)
    return panel, perturbations, factor


def dose_assignments(n_members: int, doses: tuple[float, ...], dose_combinations: str) -> list[tuple[float, ...]]:
    """Dose tuples a perturbation of ``n_members`` tokens is measured at."""
    if dose_combinations == "shared" or n_members == 1:
        return [(dose,) * n_members for dose in doses]
    return list(itertools.product(doses, repeat=n_members))


def allocate_cells(
    rng: np.random.Generator, n_cells: int, n_control_groups: int, n_perturbed_groups: int, control_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cells per control group and per perturbed group: equal shares, leftovers spread at random."""
    n_control = max(math.ceil(control_fraction * n_cells), n_control_groups)
    n_perturbed = n_cells - n_control
    if n_perturbed < n_perturbed_groups:
        raise ValueError(
            f"n_cells={n_cells} is too small: {n_perturbed_groups} perturbed conditions (perturbations x doses x "
            f"cell types x time points) and {n_control_groups} control groups need at least "
            f"{n_perturbed_groups + n_control} cells; raise n_cells or ask for fewer conditions."
        )
    return _split(rng, n_control, n_control_groups), _split(rng, n_perturbed, n_perturbed_groups)


def _split(rng: np.random.Generator, total: int, n_groups: int) -> np.ndarray:
    counts = np.full(n_groups, total // n_groups)
    counts[rng.choice(n_groups, size=total % n_groups, replace=False)] += 1
    return counts
