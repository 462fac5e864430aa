"""Loaders of public perturbation screens: a local file, the project's shared subsets, or a cached download.

Every loader returns raw counts in ``X`` and the same documented obs columns whatever the source
(``perturbation`` with ``"control"`` and ``"A+B"``, ``dose`` where the screen has doses, ...):
scPerturb's files are harmonised on loading (:mod:`cellflow.datasets._harmonise`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ._fetch import PUBLISHED, fetch_remote
from ._harmonise import norman2019_obs, papalexi2021_obs, srivatsan2020_obs
from ._registry import SCPERTURB_FILES

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from anndata import AnnData

logger = logging.getLogger("cellflow")

#: Where the project keeps its real data: ``../shared/data`` relative to the repository root.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NORMAN_FILE = "norman2019_mcfaline2023_subset.h5ad"
PAPALEXI_FILE = "papalexi2021_thp1_eccite_299g.h5ad"
NORMAN_SUBSETS = ("norman19", "mcfaline23")
SOURCES = ("auto", "subset", "scperturb")

#: obs columns that mark a file as already in cellflow's form (a shared subset, or a saved result).
_HARMONISED = {
    "norman2019": {"perturbation", "dataset", "cell_type", "dose"},
    "papalexi2021": {"perturbation", "guide", "bio_rep"},
    "srivatsan2020": {"perturbation", "perturbation_raw", "dose", "cell_type"},
}


def norman2019(
    path: str | Path | None = None,
    *,
    subset: str | None = "norman19",
    source: str = "auto",
    cache_dir: str | Path | None = None,
    known_hash: str | None = PUBLISHED,
    progressbar: bool = True,
) -> AnnData:
    """Norman et al. 2019: K562 CRISPRa screen of single and double gene activations.

    Where the data come from:

    - ``path`` given: that ``.h5ad`` file, either the shared subset or scPerturb's full file
      (told apart by their obs columns; the full file is harmonised).
    - ``source="subset"``: ``../shared/data/norman2019_mcfaline2023_subset.h5ad`` relative to
      the repository root (500 genes; its README there), which also holds McFaline-Figueroa
      et al. 2023 (CRISPRi in three glioblastoma lines).
    - ``source="scperturb"``: scPerturb's ``NormanWeissman2019_filtered.h5ad`` (Zenodo record
      13350497, 698.7 MB, every gene), downloaded once into the cache and checked against its
      published MD5 checksum.
    - ``source="auto"`` (default): the shared subset when it is there (the project's workspace and
      CI), otherwise the scPerturb download.

    The obs columns are those of the subset: ``perturbation`` (``"control"``, ``"A"``,
    ``"A+B"``), ``condition`` (the same), ``dose`` (``"1"``, or ``"1+1"`` for doubles),
    ``cell_type`` (``"k562"``; the line for McFaline-Figueroa cells), ``dataset``,
    ``perturbation_type`` (``"CRISPRa"``/``"CRISPRi"``), ``perturbation_raw``, ``treatment``,
    ``condition_cell_type``, ``ncounts``, ``ngenes``; see :func:`harmonise_norman2019`.

    Parameters
    ----------
    path
        A local ``.h5ad`` file; nothing is downloaded.
    subset
        ``"norman19"`` (K562, combinations), ``"mcfaline23"`` (only in the shared subset) or
        ``None`` (every cell of the file).
    source
        ``"auto"``, ``"subset"`` or ``"scperturb"``, used when ``path`` is not given.
    cache_dir
        Where downloads are kept; by default ``$CELLFLOW_DATA`` or the OS cache
        (:func:`cache_path`).
    known_hash
        The checksum a download must match: ``"published"`` (Zenodo's MD5), another checksum, or
        ``None`` to skip the check at your own risk (see :func:`download`).
    progressbar
        Show a progress bar while downloading.

    Returns
    -------
    AnnData of raw counts with the obs columns above.
    """
    if subset is not None and subset not in NORMAN_SUBSETS:
        raise ValueError(f"subset={subset!r} must be one of {NORMAN_SUBSETS} or None.")
    file = _locate("norman2019", path, NORMAN_FILE, source, cache_dir, known_hash, progressbar)
    adata = _read(file, "norman2019", norman2019_obs)
    if subset is not None:
        in_subset = (adata.obs["dataset"].astype(str) == subset).to_numpy()
        if not in_subset.any():
            raise ValueError(
                f"{file} has no cell of subset={subset!r} (obs['dataset'] holds "
                f"{sorted(map(str, adata.obs['dataset'].unique()))}); McFaline-Figueroa cells are only in the "
                "shared subset."
            )
        adata = adata[in_subset].copy()
    return adata


def papalexi2021(
    path: str | Path | None = None,
    *,
    source: str = "auto",
    cache_dir: str | Path | None = None,
    known_hash: str | None = PUBLISHED,
    progressbar: bool = True,
) -> AnnData:
    """Papalexi et al. 2021: ECCITE-seq of THP-1 cells with CRISPR knockouts of PD-L1 regulators.

    Where the data come from:

    - ``path`` given: that ``.h5ad`` file, the shared subset or scPerturb's file (harmonised).
    - ``source="subset"``: ``../shared/data/papalexi2021_thp1_eccite_299g.h5ad`` relative to the
      repository root (299 genes, from sceptre's example data; its README there).
    - ``source="scperturb"``: scPerturb's ``PapalexiSatija2021_eccite_RNA.h5ad`` (Zenodo record
      13350497, 147.2 MB, the whole transcriptome), downloaded once into the cache and checked
      against its published MD5 checksum.
    - ``source="auto"`` (default): the shared subset when it is there, otherwise the download.

    The obs columns: ``perturbation`` (the targeted gene, ``"control"`` for non-targeting
    guides), ``guide``, ``bio_rep`` (``"rep_1"`` to ``"rep_3"``); the subset also has
    ``guide_umi_max`` and ``guide_umi_total``. See :func:`harmonise_papalexi2021`.

    Parameters
    ----------
    path
        A local ``.h5ad`` file; nothing is downloaded.
    source
        ``"auto"``, ``"subset"`` or ``"scperturb"``, used when ``path`` is not given.
    cache_dir
        Where downloads are kept (:func:`cache_path`).
    known_hash
        The checksum a download must match: ``"published"``, another checksum, or ``None`` to
        skip the check at your own risk.
    progressbar
        Show a progress bar while downloading.

    Returns
    -------
    AnnData of raw counts with the obs columns above.
    """
    file = _locate("papalexi2021", path, PAPALEXI_FILE, source, cache_dir, known_hash, progressbar)
    return _read(file, "papalexi2021", papalexi2021_obs)


def srivatsan2020(
    path: str | Path | None = None,
    *,
    backed: bool = False,
    cache_dir: str | Path | None = None,
    known_hash: str | None = PUBLISHED,
    progressbar: bool = True,
) -> AnnData:
    """Srivatsan et al. 2020, sci-Plex 3: A549, K562 and MCF7 cells under 188 compounds at four doses.

    Without ``path``, scPerturb's ``SrivatsanTrapnell2020_sciplex3.h5ad`` (Zenodo record
    13350497, 2.5 GB, every gene) is downloaded once into the cache and checked against its
    published MD5 checksum. Its counts take several times the file's size in memory:
    ``backed=True`` leaves them on disk, and ``adata[mask].to_memory()`` then loads the cells you
    need (one cell line, some compounds); in backed mode no cell is dropped, and cells that
    cannot be labelled have no ``perturbation`` (select ``adata.obs["perturbation"].notna()``).

    The obs columns: ``perturbation`` (the compound, ``"control"`` for vehicle), ``dose`` (uM,
    ``"0"`` for controls), ``cell_type`` (the cell line), ``replicate``, ``time`` (hours),
    ``perturbation_raw``, and scPerturb's others. See :func:`harmonise_srivatsan2020`.

    Parameters
    ----------
    path
        A local copy of the scPerturb file; nothing is downloaded.
    backed
        Keep the counts on disk (``anndata``'s backed mode, read only).
    cache_dir
        Where downloads are kept (:func:`cache_path`).
    known_hash
        The checksum a download must match: ``"published"``, another checksum, or ``None`` to
        skip the check at your own risk.
    progressbar
        Show a progress bar while downloading.

    Returns
    -------
    AnnData of raw counts with the obs columns above.
    """
    file = _locate("srivatsan2020", path, None, "scperturb", cache_dir, known_hash, progressbar)
    return _read(file, "srivatsan2020", srivatsan2020_obs, backed=backed)


def _locate(
    dataset: str,
    path: str | Path | None,
    subset_file: str | None,
    source: str,
    cache_dir: str | Path | None,
    known_hash: str | None,
    progressbar: bool,
) -> Path:
    """The file to read: ``path``, the shared subset or the (cached) scPerturb download."""
    remote = SCPERTURB_FILES[dataset]
    if source not in SOURCES:
        raise ValueError(f"source={source!r} must be one of {SOURCES}.")
    if path is not None:
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist. Pass path= to a local copy of the data, or call {dataset}() without "
                f"path to use the shared subset or to download {remote.describe()} into the cache."
            )
        return path
    shared = SHARED_DATA / subset_file if subset_file is not None else None
    if source == "subset" or (source == "auto" and shared is not None and shared.exists()):
        if shared is None or not shared.exists():
            raise FileNotFoundError(
                f"The shared subset {shared} is not there (it exists only in the project's workspace). Pass "
                f"path= to a local copy, or source='scperturb' to download {remote.describe()}."
            )
        return shared
    return fetch_remote(remote, known_hash=known_hash, cache_dir=cache_dir, progressbar=progressbar)


def _read(
    file: Path,
    dataset: str,
    harmonise_obs: Callable[[pd.DataFrame], tuple[pd.DataFrame, np.ndarray]],
    *,
    backed: bool = False,
) -> AnnData:
    """Read an ``.h5ad`` file and harmonise its obs unless it already has cellflow's columns."""
    import anndata as ad

    adata = ad.read_h5ad(file, backed="r" if backed else None)
    if _HARMONISED[dataset] <= set(adata.obs.columns):
        return adata
    obs, keep = harmonise_obs(adata.obs)
    if backed:  # anndata cannot subset a backed view again: keep every cell, unlabelled ones have no perturbation
        obs.loc[~keep, "perturbation"] = None
    adata.obs = obs  # this object was just read: changing it changes nothing of the caller's
    if keep.all() or backed:
        return adata
    logger.info("Dropped %d of %d cells of %s that cannot be labelled.", int((~keep).sum()), len(keep), file.name)
    return adata[keep].copy()
