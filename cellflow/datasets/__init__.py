"""Datasets: an embedded Perturb-seq simulator with known ground truth, and loaders of public screens.

The loaders (:func:`norman2019`, :func:`papalexi2021`, :func:`srivatsan2020`) read a local file,
the project's shared subsets, or scPerturb's files downloaded once into a cache folder
(:func:`cache_path`) and checked against their published checksums; the ``harmonise_*``
functions give scPerturb's files the loaders' obs columns.
"""

from ._fetch import cache_path, download
from ._harmonise import harmonise_norman2019, harmonise_papalexi2021, harmonise_srivatsan2020
from ._loaders import norman2019, papalexi2021, srivatsan2020
from ._simulate import simulate_perturbseq, true_means

__all__ = [
    "cache_path",
    "download",
    "harmonise_norman2019",
    "harmonise_papalexi2021",
    "harmonise_srivatsan2020",
    "norman2019",
    "papalexi2021",
    "simulate_perturbseq",
    "srivatsan2020",
    "true_means",
]
