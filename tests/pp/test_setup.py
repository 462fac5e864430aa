import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellflow as cf
from cellflow.pp import get_setup


def _setup(adata, **kwargs):
    options = {"perturbation_key": "perturbation", "control": "control"} | kwargs
    cf.pp.setup(adata, **options)


def test_records_setup_and_canonical_conditions(tiny_adata):
    tiny_adata.obs.loc[tiny_adata.obs.perturbation == "A+B", "perturbation"] = ["B+A", "A+B"] * 6
    _setup(tiny_adata, covariate_keys=["cell_type"], dose_key="dose", time_key="time")
    config = get_setup(tiny_adata)
    assert config.perturbation_key == "perturbation"
    assert config.covariate_keys == ("cell_type",)
    assert config.dose_key == "dose" and config.time_key == "time"
    assert config.conditions == ("A", "A+B", "B", "control")  # "B+A" and "A+B" are one condition
    assert config.tokens == ("A", "B")


def test_setup_changes_nothing_but_uns(tiny_adata):
    before_x = tiny_adata.X.copy()
    before_obs = tiny_adata.obs.copy()
    before_var = tiny_adata.var.copy()
    _setup(tiny_adata, covariate_keys=["cell_type"], dose_key="dose", time_key="time")
    assert (tiny_adata.X != before_x).nnz == 0
    pd.testing.assert_frame_equal(tiny_adata.obs, before_obs)
    pd.testing.assert_frame_equal(tiny_adata.var, before_var)
    assert list(tiny_adata.uns) == ["cellflow"]
    assert not tiny_adata.obsm and not tiny_adata.layers


def test_setup_survives_h5ad_round_trip(tiny_adata, tmp_path):
    _setup(tiny_adata, covariate_keys=["cell_type"])
    tiny_adata.write_h5ad(tmp_path / "a.h5ad")
    assert get_setup(ad.read_h5ad(tmp_path / "a.h5ad")) == get_setup(tiny_adata)


def test_get_setup_says_what_to_run(tiny_adata):
    with pytest.raises(KeyError, match="Run cf.pp.setup"):
        get_setup(tiny_adata)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"perturbation_key": "nope"}, KeyError, "perturbation_key='nope' is not a column"),
        ({"covariate_keys": ["batch"]}, KeyError, "covariate_keys='batch' is not a column"),
        ({"dose_key": "d"}, KeyError, "dose_key='d' is not a column"),
        ({"time_key": "t"}, KeyError, "time_key='t' is not a column"),
        ({"layer": "counts"}, KeyError, "layer='counts' is not in adata.layers"),
        ({"control": "NT"}, ValueError, "No control cells"),
        ({"covariate_keys": ["perturbation"]}, ValueError, "cannot also be a covariate"),
    ],
)
def test_missing_columns_and_labels(tiny_adata, kwargs, error, message):
    with pytest.raises(error, match=message):
        _setup(tiny_adata, **kwargs)
    assert "cellflow" not in tiny_adata.uns  # nothing recorded when a check fails


def test_too_few_control_cells(tiny_adata):
    tiny_adata = tiny_adata[tiny_adata.obs.perturbation != "control"].copy()
    tiny_adata.obs.iloc[:3, 0] = "control"
    with pytest.raises(ValueError, match="Only 3 control cell"):
        _setup(tiny_adata)


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-1.0, "negative"), (0.5, "non-integer")],
)
@pytest.mark.parametrize("sparse", [True, False])
def test_bad_expression_values(tiny_adata, value, message, sparse):
    x = tiny_adata.X.toarray()
    x[5, 3] = value
    tiny_adata.X = sp.csr_matrix(x) if sparse else x
    with pytest.raises(ValueError, match=message):
        _setup(tiny_adata)


def test_normalised_data_pass_with_counts_false(tiny_adata):
    tiny_adata.layers["log"] = np.log1p(tiny_adata.X.toarray()) - 0.1
    _setup(tiny_adata, layer="log", counts=False)
    assert get_setup(tiny_adata).counts is False


def test_bad_values_in_the_layer_are_named(tiny_adata):
    tiny_adata.layers["counts"] = tiny_adata.X.toarray() * 0.5
    with pytest.raises(ValueError, match=r"adata.layers\['counts'\] holds non-integer"):
        _setup(tiny_adata, layer="counts")


@pytest.mark.parametrize("bad", [np.nan, "", "A+"])
def test_empty_labels(tiny_adata, bad):
    tiny_adata.obs["perturbation"] = tiny_adata.obs["perturbation"].astype(object)
    tiny_adata.obs.iloc[30, 0] = bad
    with pytest.raises(ValueError, match="missing labels|Empty perturbation label|empty token"):
        _setup(tiny_adata)


def test_duplicated_gene_names(tiny_adata):
    tiny_adata.var_names = ["g0", "g0"] + [f"g{i}" for i in range(2, 8)]
    with pytest.raises(ValueError, match="duplicated.*var_names_make_unique"):
        _setup(tiny_adata)


@pytest.mark.parametrize(("dose", "message"), [("1", "has 1 value"), ("1+x", "not a number"), ("1+-2", "non-negative")])
def test_doses_that_do_not_match_tokens(tiny_adata, dose, message):
    tiny_adata.obs["dose"] = tiny_adata.obs["dose"].astype(object)
    tiny_adata.obs.loc[tiny_adata.obs.perturbation == "A+B", "dose"] = dose
    with pytest.raises(ValueError, match=message):
        _setup(tiny_adata, dose_key="dose")


def test_missing_covariate_and_bad_time(tiny_adata):
    tiny_adata.obs["cell_type"] = tiny_adata.obs["cell_type"].astype(object)
    tiny_adata.obs.iloc[0, tiny_adata.obs.columns.get_loc("cell_type")] = None
    with pytest.raises(ValueError, match="cell_type.*missing values"):
        _setup(tiny_adata, covariate_keys=["cell_type"])
    tiny_adata.obs["time"] = tiny_adata.obs["time"].astype(object)
    tiny_adata.obs.iloc[0, tiny_adata.obs.columns.get_loc("time")] = "late"
    with pytest.raises(ValueError, match="time.*numeric"):
        _setup(tiny_adata, time_key="time")


def test_simulated_data_pass_setup():
    adata = cf.datasets.simulate_perturbseq(n_cells=400, n_genes=40, seed=1)
    _setup(adata, covariate_keys=["cell_type"], dose_key="dose")
    assert "control" in get_setup(adata).conditions


def _unchanged(adata, before):
    """``adata`` holds what ``before`` (a copy taken before the call) held, ``uns['cellflow']`` aside."""
    x, x0 = adata.X, before.X
    assert sp.issparse(x) == sp.issparse(x0) and x.dtype == x0.dtype
    np.testing.assert_array_equal(x.toarray() if sp.issparse(x) else x, x0.toarray() if sp.issparse(x0) else x0)
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    pd.testing.assert_frame_equal(adata.var, before.var)
    assert set(adata.uns) - {"cellflow"} == set(before.uns) and set(adata.layers) == set(before.layers)


@pytest.mark.parametrize(
    ("subset", "message"), [((slice(0, 0), slice(None)), "adata has 0 cells"), ((slice(None), []), "adata has 0 genes")]
)
def test_no_cells_or_no_genes_are_refused(tiny_adata, subset, message):
    empty = tiny_adata[subset].copy()
    before = empty.copy()
    with pytest.raises(ValueError, match=message):
        _setup(empty, covariate_keys=["cell_type"], dose_key="dose")
    _unchanged(empty, before)
    assert "cellflow" not in empty.uns


@pytest.mark.parametrize("sparse", [True, False])
def test_all_zero_expression_is_refused(tiny_adata, sparse):
    tiny_adata.X = sp.csr_matrix(tiny_adata.shape, dtype=np.float32) if sparse else np.zeros(tiny_adata.shape)
    with pytest.raises(ValueError, match=r"adata.X holds only zeros"):
        _setup(tiny_adata)
    tiny_adata.layers["counts"] = np.zeros(tiny_adata.shape, dtype=np.int64)
    with pytest.raises(ValueError, match=r"adata.layers\['counts'\] holds only zeros"):
        _setup(tiny_adata, layer="counts", counts=False)  # normalised data that are all zero model nothing either


@pytest.mark.parametrize("value", [1e9 + 64, 1e30])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sparse", [True, False])
def test_counts_above_the_bound_are_refused(tiny_adata, value, dtype, sparse):
    from cellflow.pp._setup import MAX_COUNT

    assert MAX_COUNT == 1e9
    x = tiny_adata.X.toarray().astype(dtype)
    x[7, 2] = value
    tiny_adata.X = sp.csr_matrix(x) if sparse else x
    with pytest.raises(ValueError, match=r"adata.X holds a count of .* above the largest cellflow accepts \(1e\+09"):
        _setup(tiny_adata)
    x[7, 2] = 1e9  # the bound itself is a count
    tiny_adata.X = sp.csr_matrix(x) if sparse else x
    _setup(tiny_adata)


def test_huge_values_pass_when_not_counts(tiny_adata):
    tiny_adata.layers["scaled"] = tiny_adata.X.toarray() * 1e12 + 0.5
    _setup(tiny_adata, layer="scaled", counts=False)


def test_integer_matrices_and_bool_matrices(tiny_adata):
    tiny_adata.X = tiny_adata.X.toarray().astype(np.int32)
    _setup(tiny_adata)
    tiny_adata.X = tiny_adata.X > 2
    with pytest.raises(TypeError, match=r"adata.X has dtype bool.*astype"):
        _setup(tiny_adata)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"perturbation_key": 0}, TypeError, "perturbation_key must be a string"),
        ({"control": None}, TypeError, "control must be a string"),
        ({"control": "  "}, ValueError, "control='  ' is empty"),
        ({"dose_key": 1}, TypeError, "dose_key must be a string or None"),
        ({"layer": ["counts"]}, TypeError, "layer must be a string or None"),
        ({"covariate_keys": [1]}, TypeError, "covariate_keys must be column names"),
        ({"covariate_keys": ["cell_type", "cell_type"]}, ValueError, "covariate_keys=.*names a column twice"),
        ({"combo_sep": ""}, ValueError, "combo_sep='' must be a non-empty string"),
        ({"counts": "yes"}, TypeError, "counts must be True"),
    ],
)
def test_options_of_the_wrong_type(tiny_adata, kwargs, error, message):
    with pytest.raises(error, match=message):
        _setup(tiny_adata, **kwargs)
    assert "cellflow" not in tiny_adata.uns


def test_adata_must_be_an_anndata(tiny_adata):
    with pytest.raises(TypeError, match="adata must be an AnnData"):
        _setup(tiny_adata.obs)


def test_covariate_keys_none_means_none(tiny_adata):
    _setup(tiny_adata, covariate_keys=None)
    assert get_setup(tiny_adata).covariate_keys == ()


@pytest.mark.parametrize(
    ("column", "bad", "message"),
    [
        ("perturbation", "control+A", r"adata.obs\['perturbation'\]: .*combines the control label"),
        ("perturbation", " ", r"adata.obs\['perturbation'\]: Empty perturbation label"),
        ("dose", "1+x", r"adata.obs\['dose'\]: Dose '1\+x'"),
    ],
)
def test_label_errors_name_the_column(tiny_adata, column, bad, message):
    tiny_adata.obs[column] = tiny_adata.obs[column].astype(object)
    tiny_adata.obs.iloc[40, tiny_adata.obs.columns.get_loc(column)] = bad
    before = tiny_adata.copy()
    with pytest.raises(ValueError, match=message):
        _setup(tiny_adata, dose_key="dose")
    _unchanged(tiny_adata, before)


@pytest.mark.parametrize("column", ["perturbation", "cell_type"])
def test_nul_characters_in_labels_are_refused(tiny_adata, column):
    """pandas hashes strings up to a NUL: "A\\x00+" (an empty token) would be read as "A\\x00"."""
    tiny_adata.obs[column] = tiny_adata.obs[column].astype(object)
    tiny_adata.obs.iloc[30, tiny_adata.obs.columns.get_loc(column)] = "A\x00+"
    with pytest.raises(ValueError, match=rf"adata.obs\['{column}'\] holds values with NUL characters"):
        _setup(tiny_adata, covariate_keys=["cell_type"])
