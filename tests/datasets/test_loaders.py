"""Local loaders of the real data and the checksum check of download (no network)."""

from __future__ import annotations

import hashlib

import pytest

import cellflow as cf
from cellflow.datasets._loaders import NORMAN_FILE, PAPALEXI_FILE, sha256sum
from tests.conftest import shared_file


def test_norman_subsets():
    path = shared_file(NORMAN_FILE)
    norman = cf.datasets.norman2019(path)
    mcfaline = cf.datasets.norman2019(path, subset="mcfaline23")
    both = cf.datasets.norman2019(path, subset=None)
    assert norman.n_obs == 3375 and mcfaline.n_obs == 2586 and both.n_obs == 5961
    assert set(mcfaline.obs["cell_type"]) == {"A172", "T98G", "U87MG"}
    assert (norman.obs["perturbation"].astype(str).str.contains(r"\+")).any()
    assert cf.datasets.norman2019().n_obs == 3375  # the default location is the shared folder
    with pytest.raises(ValueError, match="subset"):
        cf.datasets.norman2019(path, subset="k562")


def test_papalexi():
    adata = cf.datasets.papalexi2021(shared_file(PAPALEXI_FILE))
    assert adata.shape == (20729, 299) and (adata.obs["perturbation"] == "control").sum() == 2386


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="download"):
        cf.datasets.papalexi2021(tmp_path / "absent.h5ad")


def test_download_checks_the_checksum_of_a_local_file(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"cellflow" * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert sha256sum(source) == digest
    target = tmp_path / "sub" / "copy.bin"
    assert cf.datasets.download(source.as_uri(), target, digest.upper()) == target
    assert target.read_bytes() == source.read_bytes()
    assert cf.datasets.download("http://unused.invalid/", target, digest) == target  # present and valid: no fetch
    bad = tmp_path / "bad.bin"
    with pytest.raises(ValueError, match="SHA-256"):
        cf.datasets.download(source.as_uri(), bad, "0" * 64)
    assert not bad.exists() and not bad.with_name("bad.bin.part").exists()
    with pytest.raises(ValueError, match="exists but"):
        cf.datasets.download("http://unused.invalid/", target, "0" * 64)
