"""Where the public screens live online: the scPerturb files on Zenodo, with their published checksums."""

from __future__ import annotations

from dataclasses import dataclass

#: scPerturb's RNA release v1.4 on Zenodo (https://doi.org/10.5281/zenodo.13350497). v1.4 fixed the
#: gene labels of sci-Plex 3, which were shifted by one row in earlier versions (scPerturb issue #7).
SCPERTURB_RECORD = "13350497"


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file, as its repository lists it.

    Parameters
    ----------
    name
        The file name (also its name in the download cache).
    url
        The direct download address.
    size
        Its size in bytes, so a user knows what a download costs before starting it.
    md5
        The MD5 checksum its repository publishes (hex digits), or ``None`` where none was found:
        such a file is downloaded only when the caller passes ``known_hash=None`` explicitly.
    """

    name: str
    url: str
    size: int
    md5: str | None

    @property
    def known_hash(self) -> str | None:
        """The checksum in pooch's ``"md5:<hex>"`` form, or ``None`` if none is known."""
        return None if self.md5 is None else f"md5:{self.md5}"

    def describe(self) -> str:
        """``"<name> (<size>) from <url>"`` for messages."""
        return f"{self.name} ({human_size(self.size)}) from {self.url}"


def zenodo_file(name: str, size: int, md5: str | None, record: str = SCPERTURB_RECORD) -> RemoteFile:
    """A file of a Zenodo record, with Zenodo's direct download address."""
    return RemoteFile(name, f"https://zenodo.org/records/{record}/files/{name}?download=1", size, md5)


#: The scPerturb file of each loader. Sizes and MD5 checksums are those Zenodo lists for
#: record 13350497.
SCPERTURB_FILES: dict[str, RemoteFile] = {
    "norman2019": zenodo_file("NormanWeissman2019_filtered.h5ad", 698_680_199, "c870e6967d91c017d9da827bab183cd6"),
    "papalexi2021": zenodo_file("PapalexiSatija2021_eccite_RNA.h5ad", 147_215_278, "d9e8bfe20b0e7b0919be042e8fcf6d03"),
    "srivatsan2020": zenodo_file(
        "SrivatsanTrapnell2020_sciplex3.h5ad", 2_526_631_614, "c9e70629505d98c7ca1a837f62b14e89"
    ),
}


def human_size(n_bytes: int) -> str:
    """A byte count in decimal units (``"698.7 MB"``), as download pages show them."""
    value = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover
