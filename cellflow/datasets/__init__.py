"""Datasets: an embedded Perturb-seq simulator with known ground truth."""

from ._simulate import simulate_perturbseq, true_means

__all__ = ["simulate_perturbseq", "true_means"]
from ._loaders import download, norman2019, papalexi2021  # noqa: E402

__all__ += ["download", "norman2019", "papalexi2021"]
