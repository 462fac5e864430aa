import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellflow as cf


@pytest.fixture(scope="module")
def cells(trained):
    """30 training cells with the model's genes, and their latents."""
    adata = trained.adata[:30].copy()
    return adata, cf.tl.encode(trained, adata, copy=True).obsm["X_cellflow"]


def _with_x(adata, x, sparse=True):
    out = adata.copy()
    out.X = sp.csr_matrix(x) if sparse else np.asarray(x)
    return out


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_genes_are_matched_by_name(trained, cells):
    adata, latent = cells
    x = adata.X.toarray()
    order = np.arange(adata.n_vars)[::-1]
    extra = np.full((adata.n_obs, 2), 0.5, dtype=np.float32)  # not the model's genes: never read
    other = ad.AnnData(np.hstack([x[:, order], extra]), obs=adata.obs)
    other.var_names = [*adata.var_names[order], "EXTRA", "EXTRA"]  # a duplicated name outside the model's genes
    out = cf.tl.encode(trained, other, copy=True)
    np.testing.assert_allclose(out.obsm["X_cellflow"], latent, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sparse", [True, False])
def test_log_normalised_data_are_refused_by_a_counts_model(trained, cells, sparse):
    adata, _ = cells
    assert trained.setup.counts
    log = _with_x(adata, np.log1p(adata.X.toarray()), sparse)
    with pytest.raises(ValueError, match=r"adata.X holds non-integer values .* raw counts.*layer='counts'"):
        cf.tl.encode(trained, log)
    assert "X_cellflow" not in log.obsm
    log.layers["counts"] = adata.X.copy()
    cf.tl.encode(trained, log, layer="counts")  # the raw counts in a layer: fine
    assert log.obsm["X_cellflow"].shape == (30, trained.config.latent_dim)


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "contains NaN or infinite"), (np.inf, "contains NaN or infinite"), (-1.0, "contains negative")],
)
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("layer", [None, "counts"])
def test_nan_infinite_and_negative_values_are_refused(trained, cells, value, message, sparse, layer):
    adata, _ = cells
    x = adata.X.toarray()
    x[4, 7] = value
    bad = adata.copy()
    if layer is None:
        bad.X = sp.csr_matrix(x) if sparse else x
    else:
        bad.layers[layer] = sp.csr_matrix(x) if sparse else x
    where = r"adata\.X" if layer is None else rf"adata\.layers\['{layer}'\]"
    before = bad.copy()
    with pytest.raises(ValueError, match=f"{where} {message}"):
        cf.tl.encode(trained, bad, layer=layer)
    assert not bad.obsm
    np.testing.assert_array_equal(_dense(bad.X), _dense(before.X))  # NaN compares equal here
    np.testing.assert_array_equal(_dense(bad.layers.get("counts", 0)), _dense(before.layers.get("counts", 0)))


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def test_bad_values_outside_the_model_genes_are_ignored(trained, cells):
    adata, latent = cells
    extra = np.full((adata.n_obs, 1), np.nan, dtype=np.float32)
    other = ad.AnnData(np.hstack([adata.X.toarray(), extra]), obs=adata.obs)
    other.var_names = [*adata.var_names, "EXTRA"]
    cf.tl.encode(trained, other)
    np.testing.assert_allclose(other.obsm["X_cellflow"], latent, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicated_model_genes_are_refused(trained, cells):
    adata, _ = cells
    dup = ad.concat([adata, adata[:, :2]], axis=1)  # the first two genes twice
    dup.obs = adata.obs
    with pytest.raises(ValueError, match=r"adata.var_names holds 2 of the model's genes more than once.*G0000"):
        cf.tl.encode(trained, dup)


def test_no_cells_is_refused(trained, cells):
    adata, _ = cells
    with pytest.raises(ValueError, match="adata has 0 cells"):
        cf.tl.encode(trained, adata[:0].copy())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"layer": "nope"}, KeyError, "layer='nope' is not in adata.layers"),
        ({"layer": 3}, TypeError, "layer must be"),
        ({"key_added": None}, TypeError, "key_added must be"),
        ({"copy": "yes"}, TypeError, "copy must be True or False"),
    ],
)
def test_bad_options(trained, cells, kwargs, error, message):
    adata, _ = cells
    with pytest.raises(error, match=message):
        cf.tl.encode(trained, adata, **kwargs)


def test_model_and_adata_of_the_wrong_kind(trained, cells):
    adata, _ = cells
    with pytest.raises(TypeError, match="model must be a trained cf.CellFlow"):
        cf.tl.encode(adata, adata)
    with pytest.raises(TypeError, match="adata must be an AnnData"):
        cf.tl.encode(trained, adata.X)


def test_integer_check_reads_a_bounded_sample(monkeypatch):
    """On large data the integer check looks at about 100,000 nonzero values, not all of them."""
    import cellflow.pp._setup as setup_module

    rng = np.random.default_rng(0)
    x = sp.random(20_000, 100, density=0.5, format="csr", random_state=0, dtype=np.float32)
    x.data = rng.poisson(3.0, x.nnz).astype(np.float32) + 1
    rounded = []
    real_round = np.round
    monkeypatch.setattr(setup_module.np, "round", lambda a, *args: rounded.append(np.size(a)) or real_round(a, *args))
    assert setup_module.check_expression(x, counts=True, where="adata.X", integer_sample=100_000, model=True)
    n_chunks = -(-x.shape[0] // (2_000_000 // x.shape[1]))
    assert x.nnz == 1_000_000 and sum(rounded) <= 100_000 + n_chunks
    x.data = x.data + 0.5  # log-normalised data are non-integer almost everywhere: the sample sees it
    with pytest.raises(ValueError, match="non-integer"):
        setup_module.check_expression(x, counts=True, where="adata.X", integer_sample=100_000, model=True)


def test_encode_changes_nothing_but_obsm(trained, cells):
    adata, latent = cells
    before = adata.copy()
    cf.tl.encode(trained, adata, key_added="z")
    np.testing.assert_array_equal(adata.obsm["z"], latent)
    assert (adata.X != before.X).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    pd.testing.assert_frame_equal(adata.var, before.var)
    assert set(adata.obsm) == set(before.obsm) | {"z"} and set(adata.uns) == set(before.uns)
