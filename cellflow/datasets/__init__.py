"""Datasets: an embedded Perturb-seq simulator with known ground truth, and loaders of public screens."""

from ._loaders import download, norman2019, papalexi2021
from ._simulate import simulate_perturbseq, true_means

__all__ = ["download", "norman2019", "papalexi2021", "simulate_perturbseq", "true_means"]
