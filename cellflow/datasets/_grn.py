"""A random gene-regulatory network and its dynamics: the engine behind the simulator.

Gene ``j`` follows

    dx_j/dt = factor_j * max_rate_j * sigmoid(basal_j + sum_r weight_rj * hill(x_r)) - decay_j * x_j

where ``r`` runs over the regulators, ``hill(x) = x^n / (K^n + x^n)`` and ``factor_j`` is 1
unless gene ``j`` is perturbed. Regulators are ordered in a hierarchy (a regulator is
regulated only by regulators above it), so every condition has exactly one steady state.
The saturating sigmoid and the Hill functions make effects of several perturbations
combine non-additively, as genetic interactions do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.special import expit

# Regulation strength |weight|: a knocked-out regulator shifts a target's sigmoid input by
# about half of it, so a median of 2.5 moves typical targets by ~1 log-fold.
_WEIGHT_MEDIAN = 3.0
_HALF_LIFE_HOURS = (3.0, 0.5, 0.5, 12.0)  # median, log-sd, clipped to [min, max]


@dataclass(frozen=True)
class GeneRegulatoryNetwork:
    """A sampled network; all arrays are read-only ground truth.

    Attributes
    ----------
    regulators
        ``(R,)`` gene index of each regulator, in hierarchy order.
    weights
        ``(R, G)`` sparse (CSR) signed strength of regulator ``r`` on gene ``j``; absent where there is no edge.
    basal
        ``(n_cell_types, G)`` basal input of each gene: what makes cell types different.
    max_rate
        ``(G,)`` maximal production rate.
    decay
        ``(G,)`` decay rate per hour.
    half_response
        ``(R,)`` regulator level at which its Hill function is one half.
    hill_n
        Hill coefficient.
    """

    regulators: np.ndarray
    weights: sparse.csr_array
    basal: np.ndarray
    max_rate: np.ndarray
    decay: np.ndarray
    half_response: np.ndarray
    hill_n: float = 2.0

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return self.weights.shape[1]

    @property
    def n_targets(self) -> np.ndarray:
        """``(R,)`` number of genes each regulator regulates."""
        return np.diff(self.weights.indptr)

    def _hill(self, x_regulators: np.ndarray) -> np.ndarray:
        ratio = np.maximum(x_regulators, 0.0) / self.half_response
        powered = ratio**self.hill_n
        return powered / (1.0 + powered)

    def production(self, x: np.ndarray, basal: np.ndarray, factor: np.ndarray) -> np.ndarray:
        """Production rate of every gene, ``(C, G)``, for states ``x`` ``(C, G)``."""
        drive = basal + self._hill(x[:, self.regulators]) @ self.weights
        return factor * self.max_rate * expit(drive)

    def velocity(self, x: np.ndarray, basal: np.ndarray, factor: np.ndarray) -> np.ndarray:
        """``dx/dt`` for states ``x`` ``(C, G)``."""
        return self.production(x, basal, factor) - self.decay * x

    def steady_state(self, basal: np.ndarray, factor: np.ndarray) -> np.ndarray:
        """The steady state ``(C, G)`` of each condition (rows of ``basal`` and ``factor``)."""
        reg = self.regulators
        w_reg = self.weights[:, reg]  # sparse products: cheap, and free of BLAS threading overhead on small blocks
        scale = factor[:, reg] * self.max_rate[reg] / self.decay[reg]
        x_reg = np.zeros((basal.shape[0], reg.size))
        # The regulator graph is acyclic, so Jacobi sweeps are exact after (depth + 1) sweeps.
        for _ in range(reg.size + 1):
            updated = scale * expit(basal[:, reg] + self._hill(x_reg) @ w_reg)
            converged = np.array_equal(updated, x_reg)
            x_reg = updated
            if converged:
                break
        drive = basal + self._hill(x_reg) @ self.weights
        return factor * self.max_rate * expit(drive) / self.decay

    def integrate(self, x0: np.ndarray, basal: np.ndarray, factor: np.ndarray, times: np.ndarray) -> np.ndarray:
        """States ``(n_times, C, G)`` at ``times`` (hours, ascending), starting from ``x0`` at time 0.

        A time of ``inf`` gives the steady state. Finite times use classical Runge-Kutta with a
        step small against the fastest decay, so the error is far below the cell-level noise.
        """
        max_step = 0.2 / float(self.decay.max())
        out = np.empty((len(times), *x0.shape))
        x, now = x0.astype(float), 0.0
        for i, t in enumerate(times):
            if np.isinf(t):
                out[i] = self.steady_state(basal, factor)
                continue
            n_steps = int(np.ceil((t - now) / max_step))
            step = (t - now) / max(n_steps, 1)
            for _ in range(n_steps):
                k1 = self.velocity(x, basal, factor)
                k2 = self.velocity(x + 0.5 * step * k1, basal, factor)
                k3 = self.velocity(x + 0.5 * step * k2, basal, factor)
                k4 = self.velocity(x + step * k3, basal, factor)
                x = x + step / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            out[i], now = x, t
        return out


def sample_network(
    rng: np.random.Generator,
    n_genes: int,
    n_cell_types: int,
    *,
    regulator_fraction: float,
    regulators_per_gene: float,
    cell_type_scale: float,
    activation_probability: float = 0.5,
) -> GeneRegulatoryNetwork:
    """Draw a random sparse signed network with hub regulators.

    Each gene draws a Poisson number of regulators (mean ``regulators_per_gene``) among those
    allowed (for a regulator: the ones above it in the hierarchy), preferring a few hubs, as
    transcription-factor networks do. Half-response levels are set to each regulator's level
    in a reference state, which keeps regulation in its sensitive range.
    """
    n_reg = max(2, round(regulator_fraction * n_genes))
    regulators = rng.choice(n_genes, size=n_reg, replace=False)
    popularity = rng.pareto(1.5, size=n_reg) + 1.0
    n_allowed = np.full(n_genes, n_reg)
    n_allowed[regulators] = np.arange(n_reg)  # a regulator only hears regulators above it

    n_inputs = np.minimum(rng.poisson(regulators_per_gene, size=n_genes), n_allowed)
    sources, targets = [], []
    for gene in np.flatnonzero(n_inputs):
        allowed = n_allowed[gene]
        p = popularity[:allowed] / popularity[:allowed].sum()
        sources.append(rng.choice(allowed, size=n_inputs[gene], replace=False, p=p))
        targets.append(np.full(n_inputs[gene], gene))
    sources = np.concatenate(sources) if sources else np.zeros(0, dtype=int)
    targets = np.concatenate(targets) if targets else np.zeros(0, dtype=int)
    signs = np.where(rng.random(sources.size) < activation_probability, 1.0, -1.0)
    strengths = signs * rng.lognormal(np.log(_WEIGHT_MEDIAN), 0.3, size=sources.size)
    weights = sparse.csr_array((strengths, (sources, targets)), shape=(n_reg, n_genes))
    input_sum = weights.sum(axis=0)

    max_rate = rng.lognormal(0.0, 1.0, size=n_genes)
    median, spread, low, high = _HALF_LIFE_HOURS
    decay = np.log(2.0) / np.clip(rng.lognormal(np.log(median), spread, size=n_genes), low, high)
    # Centre each gene's sigmoid input near zero at the reference state (every Hill term 1/2).
    reference_basal = -0.5 * input_sum + rng.normal(0.0, 1.0, size=n_genes)
    reference_level = max_rate * expit(reference_basal + 0.5 * input_sum) / decay
    basal = reference_basal + cell_type_scale * rng.normal(0.0, 1.0, size=(n_cell_types, n_genes))
    return GeneRegulatoryNetwork(
        regulators=regulators,
        weights=weights,
        basal=basal,
        max_rate=max_rate,
        decay=decay,
        half_response=reference_level[regulators],
    )
