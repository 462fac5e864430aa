"""Loaders of the real data, harmonisation of scPerturb's files and checksum-verified downloads (no network)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pooch
import pytest
import scipy.sparse as sp

import cellflow as cf
from cellflow.datasets import _loaders
from cellflow.datasets._fetch import CACHE_ENV
from cellflow.datasets._loaders import NORMAN_FILE, PAPALEXI_FILE
from cellflow.datasets._registry import SCPERTURB_FILES, RemoteFile
from tests.conftest import shared_file


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _adata(obs: pd.DataFrame) -> ad.AnnData:
    counts = np.arange(len(obs) * 3, dtype=np.float32).reshape(len(obs), 3)
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs.set_axis([f"c{i}" for i in range(len(obs))]))
    adata.var_names = ["g0", "g1", "g2"]
    return adata


def _norman_scperturb() -> ad.AnnData:
    """Four cells with scPerturb's Norman obs: genes joined by "_", an old gene symbol, a control."""
    obs = pd.DataFrame(
        {
            "guide_id": ["KLF1_NegCtrl0;KLF1_NegCtrl0", "KLF1_MAP2K6;KLF1_MAP2K6", "NegCtrl0_NegCtrl0;x", "KIAA1804;x"],
            "perturbation": pd.Categorical(["KLF1", "KLF1_MAP2K6", "control", "KIAA1804"]),
            "nperts": [1, 2, 0, 1],
            "cell_line": "K562",
            "perturbation_type": "CRISPR",
            "ncounts": [10.0, 20.0, 30.0, 40.0],
        }
    )
    return _adata(obs)


def _papalexi_scperturb() -> ad.AnnData:
    obs = pd.DataFrame(
        {
            "perturbation": ["STAT2g2", "control", "PDL1g1", "CD86g1", "NT5Eg1"],
            "guide_id": ["STAT2g2", "NTg7", "PDL1g1", "CD86g1", "NT5Eg1"],
            "hto": ["rep1-tx", "rep3-tx", "rep4-tx", "rep2-ctrl", "rep1-tx"],
            "cell_line": "THP-1",
        }
    )
    return _adata(obs)


def _sciplex_scperturb() -> ad.AnnData:
    obs = pd.DataFrame(
        {
            "perturbation": ["control", "(+)-JQ1", "Dacinostat (LAQ824)", None, "Trametinib"],
            "dose_value": [0.0, 10000.0, 10.0, 100.0, np.nan],
            "dose_unit": "nM",
            "cell_line": ["A549", "K562", "MCF7", "A549", "K562"],
            "replicate": ["rep1", "rep2", "rep1", "rep1", "rep2"],
            "time": 24.0,
        }
    )
    return _adata(obs)


def _column(adata: ad.AnnData, key: str) -> list:
    return [None if pd.isna(v) else v for v in adata.obs[key].astype(object)]


# --- the shared subsets -------------------------------------------------------------------------


def test_norman_subsets():
    path = shared_file(NORMAN_FILE)
    norman = cf.datasets.norman2019(path)
    mcfaline = cf.datasets.norman2019(path, subset="mcfaline23")
    both = cf.datasets.norman2019(path, subset=None)
    assert norman.n_obs == 3375 and mcfaline.n_obs == 2586 and both.n_obs == 5961
    assert set(mcfaline.obs["cell_type"]) == {"A172", "T98G", "U87MG"}
    assert (norman.obs["perturbation"].astype(str).str.contains(r"\+")).any()
    assert cf.datasets.norman2019().n_obs == 3375  # the default location is the shared folder
    assert cf.datasets.norman2019(source="subset").n_obs == 3375
    with pytest.raises(ValueError, match="subset"):
        cf.datasets.norman2019(path, subset="k562")


def test_papalexi():
    adata = cf.datasets.papalexi2021(shared_file(PAPALEXI_FILE))
    assert adata.shape == (20729, 299) and (adata.obs["perturbation"] == "control").sum() == 2386
    assert set(adata.obs["bio_rep"]) == {"rep_1", "rep_2", "rep_3"}
    assert cf.datasets.papalexi2021().shape == (20729, 299)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="download"):
        cf.datasets.papalexi2021(tmp_path / "absent.h5ad")


def test_a_missing_shared_subset_is_explained_or_replaced_by_the_download(tmp_path, monkeypatch):
    monkeypatch.setattr(_loaders, "SHARED_DATA", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="source='scperturb'"):
        cf.datasets.norman2019(source="subset")
    with pytest.raises(ValueError, match="source"):
        cf.datasets.norman2019(source="zenodo")
    source = tmp_path / "norman.h5ad"
    _norman_scperturb().write_h5ad(source)
    remote = RemoteFile("NormanWeissman2019_filtered.h5ad", source.as_uri(), source.stat().st_size, _md5(source))
    monkeypatch.setitem(SCPERTURB_FILES, "norman2019", remote)
    adata = cf.datasets.norman2019(cache_dir=tmp_path / "cache")  # "auto" without the subset: the download
    assert _column(adata, "perturbation") == ["KLF1", "KLF1+MAP2K6", "control", "MAP3K21"]
    assert (tmp_path / "cache" / remote.name).exists()


# --- harmonisation of scPerturb's files ---------------------------------------------------------


def test_harmonise_norman2019_known_answer():
    raw = _norman_scperturb()
    before = raw.obs.copy()
    adata = cf.datasets.harmonise_norman2019(raw)
    pd.testing.assert_frame_equal(raw.obs, before)  # the input is left alone
    assert _column(adata, "perturbation") == ["KLF1", "KLF1+MAP2K6", "control", "MAP3K21"]
    assert _column(adata, "condition") == _column(adata, "perturbation")
    assert _column(adata, "perturbation_raw") == ["KLF1", "KLF1+MAP2K6", "control", "KIAA1804"]
    assert _column(adata, "dose") == ["1", "1+1", "1", "1"]
    assert _column(adata, "condition_cell_type") == ["KLF1_k562", "KLF1+MAP2K6_k562", "control_k562", "MAP3K21_k562"]
    assert set(adata.obs["cell_type"]) == {"k562"} and set(adata.obs["dataset"]) == {"norman19"}
    assert set(adata.obs["perturbation_type"]) == {"CRISPRa"} and set(adata.obs["treatment"]) == {"none"}
    assert _column(adata, "guide_id") == list(before["guide_id"]) and "nperts" in adata.obs  # scPerturb's kept
    np.testing.assert_array_equal(adata.X.toarray(), raw.X.toarray())


def test_harmonise_norman2019_reproduces_the_shared_subset():
    """Turn the subset's labels back into scPerturb's form: harmonising must give the subset's obs again."""
    subset = cf.datasets.norman2019(shared_file(NORMAN_FILE))
    obs = pd.DataFrame(
        {"perturbation": subset.obs["perturbation_raw"].astype(str).str.replace("+", "_"), "cell_line": "K562"},
        index=subset.obs_names,
    )
    harmonised = cf.datasets.harmonise_norman2019(ad.AnnData(obs=obs))
    columns = ["condition", "perturbation", "perturbation_type", "dataset", "cell_type", "treatment", "dose"]
    columns += ["perturbation_raw", "condition_cell_type"]
    for key in columns:
        assert (harmonised.obs[key].astype(str) == subset.obs[key].astype(str)).all(), key


def test_harmonise_papalexi2021_known_answer():
    adata = cf.datasets.harmonise_papalexi2021(_papalexi_scperturb())
    # the cell with hashtag rep2-ctrl is none of the three treated replicates: dropped
    assert list(adata.obs_names) == ["c0", "c1", "c2", "c4"]
    assert _column(adata, "perturbation") == ["STAT2", "control", "CD274", "NT5E"]
    assert _column(adata, "guide") == ["STAT2g2", "NTg7", "PDL1g1", "NT5Eg1"]
    assert _column(adata, "bio_rep") == ["rep_1", "rep_2", "rep_3", "rep_1"]
    np.testing.assert_array_equal(adata.X.toarray(), _papalexi_scperturb()[[0, 1, 2, 4]].X.toarray())


def test_harmonise_papalexi2021_reproduces_the_shared_subset():
    subset = cf.datasets.papalexi2021(shared_file(PAPALEXI_FILE))
    guide = subset.obs["guide"].astype(str)
    hashtag = {"rep_1": "rep1-tx", "rep_2": "rep3-tx", "rep_3": "rep4-tx"}
    obs = pd.DataFrame(
        {
            "perturbation": guide.where(~guide.str.startswith("NTg"), "control"),
            "guide_id": guide,
            "hto": subset.obs["bio_rep"].astype(str).map(hashtag),
        },
        index=subset.obs_names,
    )
    harmonised = cf.datasets.harmonise_papalexi2021(ad.AnnData(obs=obs))
    for key in ("perturbation", "guide", "bio_rep"):
        assert (harmonised.obs[key].astype(str) == subset.obs[key].astype(str)).all(), key


def test_harmonise_srivatsan2020_known_answer():
    adata = cf.datasets.harmonise_srivatsan2020(_sciplex_scperturb())
    # no compound (c3) or no dose (c4): dropped
    assert list(adata.obs_names) == ["c0", "c1", "c2"]
    assert _column(adata, "perturbation") == ["control", "(plus)-JQ1", "Dacinostat (LAQ824)"]
    assert _column(adata, "perturbation_raw") == ["control", "(+)-JQ1", "Dacinostat (LAQ824)"]
    assert _column(adata, "dose") == ["0", "10", "0.01"]  # nM -> uM
    assert _column(adata, "cell_type") == ["A549", "K562", "MCF7"]
    assert _column(adata, "replicate") == ["rep1", "rep2", "rep1"] and set(adata.obs["time"]) == {24.0}
    # cellflow parses the labels and doses as they are: one token each, the dose in uM
    parsed = [
        cf.pp.parse_condition(p, control="control", dose=d)
        for p, d in zip(_column(adata, "perturbation"), _column(adata, "dose"))
    ]
    assert parsed == [
        cf.pp.Condition((), ()),
        cf.pp.Condition(("(plus)-JQ1",), (10.0,)),
        cf.pp.Condition(("Dacinostat (LAQ824)",), (0.01,)),
    ]


def test_harmonisation_refuses_other_files():
    with pytest.raises(ValueError, match="hto"):
        cf.datasets.harmonise_papalexi2021(_norman_scperturb())
    papalexi = _papalexi_scperturb()
    papalexi.obs["hto"] = "HTO-1"
    with pytest.raises(ValueError, match="replicate hashtags"):
        cf.datasets.harmonise_papalexi2021(papalexi)
    sciplex = _sciplex_scperturb()
    sciplex.obs["dose_unit"] = "uM"
    with pytest.raises(ValueError, match="nM"):
        cf.datasets.harmonise_srivatsan2020(sciplex)
    with pytest.raises(TypeError, match="AnnData"):
        cf.datasets.harmonise_norman2019(_norman_scperturb().obs)


def test_loaders_harmonise_a_local_scperturb_file(tmp_path):
    norman, sciplex = tmp_path / "norman.h5ad", tmp_path / "sciplex.h5ad"
    _norman_scperturb().write_h5ad(norman)
    _sciplex_scperturb().write_h5ad(sciplex)
    adata = cf.datasets.norman2019(norman)
    assert _column(adata, "perturbation") == ["KLF1", "KLF1+MAP2K6", "control", "MAP3K21"]
    with pytest.raises(ValueError, match="mcfaline23"):
        cf.datasets.norman2019(norman, subset="mcfaline23")
    expected = cf.datasets.harmonise_srivatsan2020(_sciplex_scperturb())
    loaded = cf.datasets.srivatsan2020(sciplex)
    assert _column(loaded, "dose") == ["0", "10", "0.01"]
    np.testing.assert_array_equal(loaded.X.toarray(), expected.X.toarray())
    # backed: the counts stay on disk and every cell stays (anndata cannot subset a backed view again);
    # cells that cannot be labelled have no perturbation, and a selection loads what it needs
    backed = cf.datasets.srivatsan2020(sciplex, backed=True)
    assert backed.isbacked and not backed.is_view
    assert _column(backed, "perturbation") == ["control", "(plus)-JQ1", "Dacinostat (LAQ824)", None, None]
    k562 = backed[(backed.obs["cell_type"] == "K562").to_numpy() & backed.obs["perturbation"].notna().to_numpy()]
    np.testing.assert_array_equal(
        k562.to_memory().X.toarray(), expected[expected.obs["cell_type"] == "K562"].X.toarray()
    )
    backed.file.close()


# --- downloads: checksum, cache folder ----------------------------------------------------------


def test_download_checks_the_checksum_and_fetches_once(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"cellflow" * 1000)
    md5, sha256 = _md5(source), hashlib.sha256(source.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    path = cf.datasets.download(source.as_uri(), f"md5:{md5.upper()}", cache_dir=cache)
    assert path == cache / "source.bin" and path.read_bytes() == source.read_bytes()
    source.unlink()  # a second call must not fetch again: the source is gone, the cached copy is used
    assert cf.datasets.download(source.as_uri(), sha256, cache_dir=cache) == path
    assert cf.datasets.download("https://unused.invalid/source.bin", f"sha256:{sha256}", cache_dir=cache) == path


def test_download_refuses_a_wrong_checksum_and_keeps_nothing(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"cellflow" * 1000)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="refused and not kept"):
        cf.datasets.download(source.as_uri(), "md5:" + "0" * 32, cache_dir=cache)
    assert not cache.exists() or list(cache.iterdir()) == []
    with pytest.raises(ValueError, match="not a checksum"):
        cf.datasets.download(source.as_uri(), "0123", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="names no file"):
        cf.datasets.download((tmp_path / "absent.bin").as_uri(), None, cache_dir=cache)


def test_cache_folder_from_the_argument_the_environment_or_the_os(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert cf.datasets.cache_path() == Path(pooch.os_cache("cellflow"))
    assert cf.datasets.cache_path(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cf.datasets.cache_path() == tmp_path / "env"
    assert cf.datasets.cache_path(tmp_path / "arg") == tmp_path / "arg"  # the argument wins
    source = tmp_path / "file.txt"
    source.write_text("x")
    assert cf.datasets.download(source.as_uri(), None).parent == tmp_path / "env"


def test_remote_loader_needs_a_published_checksum_or_an_explicit_none(tmp_path, monkeypatch):
    source = tmp_path / "papalexi.h5ad"
    _papalexi_scperturb().write_h5ad(source)
    name = "PapalexiSatija2021_eccite_RNA.h5ad"
    cache = tmp_path / "cache"
    monkeypatch.setitem(SCPERTURB_FILES, "papalexi2021", RemoteFile(name, source.as_uri(), 1, None))
    with pytest.raises(ValueError, match="No published checksum"):
        cf.datasets.papalexi2021(source="scperturb", cache_dir=cache)
    assert not (cache / name).exists()
    monkeypatch.setitem(SCPERTURB_FILES, "papalexi2021", RemoteFile(name, source.as_uri(), 1, "0" * 32))
    with pytest.raises(ValueError, match="refused"):
        cf.datasets.papalexi2021(source="scperturb", cache_dir=cache)
    assert not (cache / name).exists()
    adata = cf.datasets.papalexi2021(source="scperturb", cache_dir=cache, known_hash=None)  # the user's risk
    assert _column(adata, "perturbation") == ["STAT2", "control", "CD274", "NT5E"]
    explicit = cf.datasets.papalexi2021(source="scperturb", cache_dir=cache, known_hash=f"md5:{_md5(source)}")
    assert explicit.n_obs == 4
