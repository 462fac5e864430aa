"""Datasets: an embedded Perturb-seq simulator with known ground truth."""

from ._simulate import simulate_perturbseq, true_means

__all__ = ["simulate_perturbseq", "true_means"]
