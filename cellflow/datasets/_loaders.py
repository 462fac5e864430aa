"""Loaders of real perturbation screens stored as local ``.h5ad`` files, and a checksum-verified download."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData

#: Where the project keeps its real data: ``../shared/data`` relative to the repository root.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NORMAN_FILE = "norman2019_mcfaline2023_subset.h5ad"
PAPALEXI_FILE = "papalexi2021_thp1_eccite_299g.h5ad"
NORMAN_SUBSETS = ("norman19", "mcfaline23")


def _resolve(path: str | Path | None, name: str) -> Path:
    path = Path(path) if path is not None else SHARED_DATA / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist. Pass path= to a local copy of {name} "
            "(or fetch one with cellflow.datasets.download(url, path, sha256))."
        )
    return path


def norman2019(path: str | Path | None = None, *, subset: str | None = "norman19") -> AnnData:
    """Norman et al. 2019 (K562 CRISPRa singles and doubles) with McFaline-Figueroa et al. 2023 (3 lines).

    Parameters
    ----------
    path
        The ``.h5ad`` file; by default ``../shared/data/norman2019_mcfaline2023_subset.h5ad``
        relative to the repository root.
    subset
        ``"norman19"`` (K562, combinations), ``"mcfaline23"`` (CRISPRi in 3 glioblastoma
        lines, ``obs.cell_type``) or ``None`` (both).

    Returns
    -------
    AnnData of raw counts (``obs.perturbation``, ``"control"`` for controls; combinations ``"A+B"``).
    """
    import anndata as ad

    if subset is not None and subset not in NORMAN_SUBSETS:
        raise ValueError(f"subset={subset!r} must be one of {NORMAN_SUBSETS} or None.")
    adata = ad.read_h5ad(_resolve(path, NORMAN_FILE))
    if subset is not None:
        adata = adata[adata.obs["dataset"].astype(str) == subset].copy()
    return adata


def papalexi2021(path: str | Path | None = None) -> AnnData:
    """Papalexi et al. 2021 (ECCITE-seq, THP-1, CRISPR knockouts of 26 genes, 299 measured genes).

    Parameters
    ----------
    path
        The ``.h5ad`` file; by default ``../shared/data/papalexi2021_thp1_eccite_299g.h5ad``
        relative to the repository root.

    Returns
    -------
    AnnData of raw counts (``obs.perturbation``, ``"control"`` for non-targeting guides; ``obs.bio_rep``).
    """
    import anndata as ad

    return ad.read_h5ad(_resolve(path, PAPALEXI_FILE))


def sha256sum(path: str | Path) -> str:
    """SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, path: str | Path, sha256: str) -> Path:
    """Download ``url`` to ``path`` (unless a file with the right checksum is already there) and verify it.

    Parameters
    ----------
    url
        Where to fetch the file from (``http(s)://`` or ``file://``).
    path
        Destination file.
    sha256
        Expected SHA-256 hex digest of the file.

    Returns
    -------
    The path of the verified file.

    Raises
    ------
    ValueError
        The checksum does not match (a partial download is removed; an existing file is left alone).
    """
    import urllib.request

    path = Path(path)
    expected = sha256.lower().strip()
    if path.exists():
        found = sha256sum(path)
        if found != expected:
            raise ValueError(f"{path} exists but its SHA-256 is {found}, not {expected}; remove it and download again.")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    with urllib.request.urlopen(url) as response, open(partial, "wb") as out:  # noqa: S310 (user-given URL)
        while block := response.read(1 << 20):
            out.write(block)
    found = sha256sum(partial)
    if found != expected:
        partial.unlink()
        raise ValueError(f"The file from {url} has SHA-256 {found}, not {expected}; it was not kept.")
    partial.replace(path)
    return path
