"""Property-based tests of the user-facing entry points under hostile input.

Every input either gives the documented result or raises ``ValueError``, ``TypeError`` or
``KeyError`` whose message names the argument at fault (never another exception type), and
the user's AnnData is unchanged afterwards (``cf.pp.setup`` writes ``uns["cellflow"]``, its
documented effect, and ``cf.tl.encode`` writes ``obsm[key_added]`` unless ``copy=True``).

Each test states, from the input alone, which arguments are at fault and what the message must
name; the order in which the functions check their arguments is left free.
"""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cellflow as cf

USER_ERRORS = (ValueError, TypeError, KeyError)
SETTINGS = {"deadline": None, "database": None, "suppress_health_check": [HealthCheck.too_slow]}
MAX_COUNT = 1e9  # documented bound of cf.pp.setup and cf.tl.encode


# ---------------------------------------------------------------------------------------- helpers
def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _snapshot(adata: ad.AnnData) -> dict:
    """What must not change: matrices (values, dtype, sparsity), obs, var and the keys of uns/obsm."""
    return {
        "X": (_dense(adata.X).copy(), sp.issparse(adata.X), adata.X.dtype),
        "layers": {k: (_dense(v).copy(), sp.issparse(v)) for k, v in adata.layers.items()},
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "uns": set(adata.uns),
        "obsm": set(adata.obsm),
    }


def _assert_unchanged(adata: ad.AnnData, before: dict, *, uns_added=(), obsm_added=()) -> None:
    x, sparse, dtype = before["X"]
    assert sp.issparse(adata.X) == sparse and adata.X.dtype == dtype
    np.testing.assert_array_equal(_dense(adata.X), x)  # NaN equals NaN here
    assert set(adata.layers) == set(before["layers"])
    for key, (value, was_sparse) in before["layers"].items():
        assert sp.issparse(adata.layers[key]) == was_sparse
        np.testing.assert_array_equal(_dense(adata.layers[key]), value)
    pd.testing.assert_frame_equal(adata.obs, before["obs"])
    pd.testing.assert_frame_equal(adata.var, before["var"])
    assert set(adata.uns) - set(uns_added) == before["uns"] - set(uns_added)
    assert set(adata.obsm) - set(obsm_added) == before["obsm"] - set(obsm_added)


def _call(function, patterns: list[str]):
    """Run ``function``: ``patterns`` empty -> it must succeed; else a user error matching one of them."""
    try:
        out = function()
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        assert patterns, f"valid input refused: {type(err).__name__}: {message}"
        assert any(re.search(p, message) for p in patterns), f"{message!r} names none of {patterns}"
        event(f"refused: {type(err).__name__}")
        return err
    assert not patterns, f"invalid input accepted (expected an error naming one of {patterns})"
    event("accepted")
    return out


# ---------------------------------------------------------------------------------------- cf.pp.setup
CONTROL = "control"
GOOD_LABELS = [CONTROL, CONTROL, CONTROL, f" {CONTROL} ", "A", "B", "A+B", "B+A", " A + B ", "é", "Ω+é", "A+B+C"]
BAD_LABELS = ["", "   ", "\t", "+", "A+", "+A", "A++B", "A+A", f"{CONTROL}+A", f"A+{CONTROL}", None]


def _label_is_bad(label) -> bool:
    """The documented label rules: non-empty, no empty or repeated token, the control never in a combination."""
    if not isinstance(label, str) or not label.strip():  # a missing label (None, NaN) or an empty one
        return True
    label = label.strip()
    if label == CONTROL:
        return False
    tokens = [t.strip() for t in label.split("+")]
    return any(not t for t in tokens) or len(set(tokens)) != len(tokens) or CONTROL in tokens


def _canonical(label: str) -> str:
    label = label.strip()
    return CONTROL if label == CONTROL else "+".join(sorted(t.strip() for t in label.split("+")))


@st.composite
def screens(draw):
    """An AnnData (0..30 cells, 0..6 genes; int or float, sparse or dense) and setup's options.

    A drawn set of parts is made hostile (none of them: a valid screen, so success is tested too);
    the faults are then read from the data themselves, not from this draw.
    """
    hostile = draw(st.sets(st.sampled_from(["shape", "values", "labels", "covariates"])))
    n_obs = draw(st.integers(0, 30) if "shape" in hostile else st.integers(20, 30))
    n_vars = draw(st.integers(0, 6) if "shape" in hostile else st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.poisson(2.0, (n_obs, n_vars)).astype(np.float64)
    x[0 if n_obs else slice(None), :] += 1  # a valid screen has some expression
    special = draw(st.sampled_from(["nan", "inf", "-inf", "negative", "fraction", "huge", "zeros"]))
    if "values" not in hostile:
        special = None
    if special == "zeros":
        x[:] = 0
    elif special is not None and x.size:
        value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "negative": -1.0, "fraction": 0.5}.get(special)
        if special == "huge":
            value = draw(st.sampled_from([1e9 + 1024, 3e9, 1e30]))
        x[draw(st.integers(0, n_obs - 1)), draw(st.integers(0, n_vars - 1))] = value
    dtype = np.dtype(draw(st.sampled_from(["int32", "int64", "float32", "float64"])))
    if dtype.kind == "i":  # what an integer matrix can hold of the values drawn
        x = np.where(np.isfinite(x) & (np.abs(x) <= np.iinfo(dtype).max), x, 0)
    x = x.astype(dtype)
    matrix = sp.csr_matrix(x) if draw(st.booleans()) else x

    letters = st.text(st.characters(categories=["L"]), min_size=1, max_size=4)  # unicode names: valid tokens
    if "labels" in hostile:
        anything = st.text(st.characters(codec="utf-8"), max_size=6)
        label = st.one_of(st.sampled_from(GOOD_LABELS + BAD_LABELS), anything, letters)
    else:
        label = st.one_of(
            st.sampled_from(GOOD_LABELS),
            letters,
            st.builds("+".join, st.lists(letters, min_size=1, max_size=3, unique=True)),
        )
    labels = draw(st.lists(label, min_size=n_obs, max_size=n_obs))
    if "labels" not in hostile or draw(st.booleans()):  # enough control cells
        labels = [lab if i % 2 else CONTROL for i, lab in enumerate(labels)]
    cell_type = st.sampled_from(["x", "y", None] if "covariates" in hostile else ["x", "y"])
    cell_types = draw(st.lists(cell_type, min_size=n_obs, max_size=n_obs))
    obs = pd.DataFrame(
        {"perturbation": np.array(labels, dtype=object), "cell_type": np.array(cell_types, dtype=object)},
        index=[f"c{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(n_vars)])
    layer = draw(st.sampled_from([None, "counts"]))
    if layer is None:
        adata = ad.AnnData(matrix, obs=obs, var=var)
    else:  # X holds something else entirely: setup must read the layer
        adata = ad.AnnData(np.full(x.shape, 0.25, dtype=np.float32), obs=obs, var=var)
        adata.layers[layer] = matrix
    options = {
        "perturbation_key": "perturbation",
        "control": CONTROL,
        "covariate_keys": draw(st.sampled_from([(), ("cell_type",)])),
        "layer": layer,
        "counts": draw(st.sampled_from([True, True, False])),
    }
    return adata, options


def _setup_faults(adata: ad.AnnData, options: dict) -> list[str]:
    """Patterns the error must match, one per fault of the input (empty: the input is valid)."""
    layer = options["layer"]
    where = re.escape("adata.X" if layer is None else f"adata.layers[{layer!r}]")
    x = _dense(adata.X if layer is None else adata.layers[layer]).astype(np.float64)
    faults = []
    if adata.n_obs == 0:
        faults.append("adata has 0 cells")
    if adata.n_vars == 0:
        faults.append("adata has 0 genes")
    if not np.all(np.isfinite(x)):
        faults.append(f"{where} contains NaN")
    finite = x[np.isfinite(x)]
    if options["counts"] and (finite < 0).any():
        faults.append(f"{where} contains negative")
    if options["counts"] and (finite > MAX_COUNT).any():
        faults.append(f"{where} holds a count of")
    if options["counts"] and (finite != np.round(finite)).any():
        faults.append(f"{where} holds non-integer")
    if not (x != 0).any():
        faults.append(f"{where} holds only zeros")
    labels = adata.obs["perturbation"].tolist()
    if any(_label_is_bad(label) or "\x00" in label for label in labels):  # pandas cannot hash NUL characters
        faults.append(re.escape("adata.obs['perturbation']"))
    elif sum(label.strip() == CONTROL for label in labels) < 10:
        faults.append("control cell")  # "No control cells" or "Only 3 control cell(s)"
    if "cell_type" in options["covariate_keys"] and adata.obs["cell_type"].isna().any():
        faults.append(re.escape("adata.obs['cell_type']"))
    return faults


@settings(max_examples=400, **SETTINGS)
@given(screens())
def test_setup_accepts_valid_screens_and_names_the_fault_of_any_other(screen):
    adata, options = screen
    faults = _setup_faults(adata, options)
    before = _snapshot(adata)
    _call(lambda: cf.pp.setup(adata, **options), faults)
    _assert_unchanged(adata, before, uns_added=["cellflow"])
    if faults:
        assert "cellflow" not in adata.uns  # nothing recorded when a check fails
    else:
        config = cf.pp.get_setup(adata)
        assert config.conditions == tuple(sorted({_canonical(label) for label in adata.obs["perturbation"]}))
        assert config.counts is options["counts"] and config.layer == options["layer"]


# ---------------------------------------------------------------------------------------- a trained model
@pytest.fixture(scope="module")
def tiny():
    """ONE tiny model (30 genes, 2 cell types), trained for seconds, and its training data."""
    adata = cf.datasets.simulate_perturbseq(n_cells=400, n_genes=30, n_cell_types=2, seed=0)
    cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    model = cf.CellFlow(adata, latent_dim=4, backbone_kwargs={"hidden_dim": 16, "n_blocks": 1})
    model.train(vae_epochs=2, flow_steps=5, reflow_rounds=0, progress_bar=False, accelerator="cpu")
    latent = cf.tl.encode(model, adata, copy=True).obsm["X_cellflow"]
    return model, adata, latent


# ---------------------------------------------------------------------------------------- cf.tl.generate
INTS = (int, np.integer)
N_GENES = 30


def _is_int(value) -> bool:
    return isinstance(value, INTS) and not isinstance(value, bool | np.bool_)


@st.composite
def requests(draw, tokens: list[str]):
    """Arguments of cf.tl.generate: a drawn set of them is hostile (none of them: a valid request)."""
    hostile = draw(st.sets(st.sampled_from(["conditions", "n_cells", "seed", "covariates", "doses"])))
    a, b = tokens[0], tokens[1]
    good = [a, f"{b}+{a}", "control", f" {a} ", f"{a}+{b}"]
    bad = ["NOPE", "", "  ", f"{a}+", f"{a}+control", f"{a}+{a}", f"{a}++{b}"]
    pool = good + bad if "conditions" in hostile else good
    conditions = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    n_cells = st.one_of(st.integers(1, 12), st.sampled_from([np.int64(4), np.int32(2)]))
    if "n_cells" in hostile:
        n_cells = st.one_of(
            n_cells, st.integers(-2, 0), st.sampled_from([10**9, 2**40, True, False, 2.5, 3.0, "10", None])
        )
    seed = st.one_of(st.integers(0, 2**63 - 1), st.sampled_from([np.int64(5), np.uint8(7)]))
    if "seed" in hostile:
        seed = st.one_of(seed, st.sampled_from([-1, 2**63, 2**64, None, 1.5, True, "0"]))
    covariates = [{"cell_type": "type_0"}, {"cell_type": "type_1"}]
    if "covariates" in hostile:
        covariates += [
            None,
            {},
            {"cell_type": "type_9"},
            {"cell_type": 0},
            {"batch": "b1"},
            {"cell_type": "type_0", "batch": "b1"},
            "type_0",
            ["type_0"],
        ]
    dose = st.sampled_from([1, 1.0, "1", np.float32(1.0), "1+1", np.int64(1)])
    if "doses" in hostile:
        dose = st.one_of(dose, st.sampled_from(["0", 0.5, "0.5", "0.5+1", -1, "x", "nan", "", None, True]))
    doses = st.one_of(st.none(), st.lists(dose, min_size=len(conditions), max_size=len(conditions)))
    if "doses" in hostile:
        doses = st.one_of(doses, st.lists(dose, max_size=4), st.sampled_from(["1", "0.5+1", 1.0]))
    return {
        "conditions": conditions,
        "n_cells": draw(n_cells),
        "seed": draw(seed),
        "covariates": draw(st.sampled_from(covariates)),
        "doses": draw(doses),
    }


def _dose_is_bad(dose, label: str) -> bool:
    """A dose the documented rules refuse for ``label`` on a model without dose_key (it knows dose 1 only)."""
    if dose is None or isinstance(dose, bool):
        return True
    if label.strip() == CONTROL:  # the control has no tokens: its dose is not read
        return False
    n_tokens = len(label.split("+"))
    parts = dose.split("+") if isinstance(dose, str) else [dose] * n_tokens
    if len(parts) != n_tokens:
        return True
    try:
        return any(float(p) != 1.0 for p in parts)  # not a number, or not dose 1
    except ValueError:
        return True


# How a message names each argument ("doses has 3 entries for 2 conditions" names doses, not conditions).
NAMES = {
    "conditions": r"conditions(\[\d+\])?[:=]",
    "n_cells": r"n_cells[ =]",
    "seed": r"seed[ =]",
    "covariates": r"covariates[ \[=]|in covariates",
    "doses": r"doses[ \[=]",
}


def _generate_faults(kwargs: dict, tokens: list[str]) -> list[str]:
    faults = []
    conditions = kwargs["conditions"]
    for label in conditions:
        if _label_is_bad(label) or (
            label.strip() != CONTROL and any(t.strip() not in tokens for t in label.split("+"))
        ):
            faults.append("conditions")
    n_cells, seed = kwargs["n_cells"], kwargs["seed"]
    if not _is_int(n_cells) or n_cells < 1 or n_cells * len(conditions) * N_GENES > 2e9:
        faults.append("n_cells")
    if not _is_int(seed) or not 0 <= seed < 2**63:
        faults.append("seed")
    covariates = kwargs["covariates"]
    if not isinstance(covariates, dict) or covariates not in ({"cell_type": "type_0"}, {"cell_type": "type_1"}):
        faults.append("covariates")
    doses = kwargs["doses"]
    if doses is not None:
        if isinstance(doses, str | float) or len(doses) != len(conditions):
            faults.append("doses")
        elif any(d is None or isinstance(d, bool) for d in doses):
            faults.append("doses")
        elif any(_dose_is_bad(d, label) for d, label in zip(doses, conditions) if not _label_is_bad(label)):
            faults.append("doses")  # malformed, or not the dose 1 a model without dose_key knows
    return [NAMES[name] for name in dict.fromkeys(faults)]


@settings(max_examples=300, **SETTINGS)
@given(data=st.data())
def test_generate_gives_the_documented_cells_or_names_the_bad_argument(tiny, data):
    model, adata, _ = tiny
    tokens = list(model.codec.tokens)
    kwargs = data.draw(requests(tokens))
    faults = _generate_faults(kwargs, tokens)
    before = _snapshot(adata)
    out = _call(lambda: cf.tl.generate(model, **kwargs), faults)
    _assert_unchanged(adata, before)
    if faults:
        return
    n, conditions = int(kwargs["n_cells"]), kwargs["conditions"]
    assert out.shape == (n * len(conditions), N_GENES)
    assert list(out.obs["perturbation"]) == [_canonical(c) for c in conditions for _ in range(n)]
    assert set(out.obs["cell_type"]) == {kwargs["covariates"]["cell_type"]}
    values = out.X.data
    assert np.all(values >= 0) and np.array_equal(values, np.round(values))
    assert out.uns["cellflow_generate"]["seed"] == int(kwargs["seed"])


# ---------------------------------------------------------------------------------------- cf.tl.encode
@st.composite
def encode_inputs(draw, adata: ad.AnnData):
    """Cells of the training data with their genes shuffled, extended, dropped or duplicated, and corrupted."""
    n_obs = draw(st.integers(0, 12))
    rows = np.asarray(draw(st.lists(st.integers(0, adata.n_obs - 1), min_size=n_obs, max_size=n_obs, unique=True)))
    rows = rows.astype(int)
    x = adata.X[rows].toarray().astype(np.float32)
    genes = list(adata.var_names)
    genes_mode = draw(st.sampled_from(["same", "reversed", "extra", "missing", "duplicated_model", "duplicated_extra"]))
    model_columns = list(range(len(genes)))  # columns that hold the model's genes
    if genes_mode == "reversed":
        x, genes = x[:, ::-1], genes[::-1]
    elif genes_mode in ("extra", "duplicated_extra"):
        n_extra = 1 if genes_mode == "extra" else 2
        x = np.hstack([x, np.full((n_obs, n_extra), 3.0, dtype=np.float32)])
        genes = genes + ["EXTRA"] * n_extra
    elif genes_mode == "missing":
        x, genes = np.delete(x, 5, axis=1), genes[:5] + genes[6:]
        model_columns = list(range(len(genes)))
    elif genes_mode == "duplicated_model":
        x, genes = np.hstack([x, x[:, :1]]), genes + genes[:1]
        model_columns = list(range(len(genes)))
    corruption = draw(st.sampled_from([None, None, "nan", "inf", "negative", "fraction", "huge"]))
    corrupt_model_gene = True
    if corruption is not None and n_obs:
        columns = list(range(x.shape[1]))
        column = draw(st.sampled_from(columns))
        corrupt_model_gene = column in model_columns
        value = {"nan": np.nan, "inf": np.inf, "negative": -2.0, "fraction": 0.5, "huge": 1e30}[corruption]
        x[draw(st.integers(0, n_obs - 1)), column] = value
    else:
        corruption = None
    sparse = draw(st.booleans())
    matrix = sp.csr_matrix(x) if sparse else x
    layer = draw(st.sampled_from([None, None, "counts", "nope"]))
    obs = adata.obs.iloc[rows].copy()
    var = pd.DataFrame(index=pd.Index(genes))
    if layer == "counts":  # X holds log-normalised values: encode must read the layer it is given
        other = ad.AnnData(np.log1p(np.nan_to_num(np.abs(x))) + 0.1, obs=obs, var=var)
        other.layers["counts"] = matrix
    else:
        other = ad.AnnData(matrix, obs=obs, var=var)
    kwargs = {"layer": layer, "copy": draw(st.booleans()), "key_added": draw(st.sampled_from(["X_cellflow", "z"]))}
    case = {
        "rows": rows,
        "genes_mode": genes_mode,
        "corruption": corruption if corrupt_model_gene else None,
    }
    return other, kwargs, case


def _encode_faults(other: ad.AnnData, kwargs: dict, case: dict) -> list[str]:
    layer = kwargs["layer"]
    where = re.escape("adata.X" if layer is None else f"adata.layers[{layer!r}]")
    faults = []
    if other.n_obs == 0:
        faults.append("adata has 0 cells")
    if case["genes_mode"] == "missing":
        faults.append("adata lacks 1 of the model's genes")
    if case["genes_mode"] == "duplicated_model":
        faults.append(re.escape("adata.var_names holds 1 of the model's genes more than once"))
    if layer == "nope":
        faults.append("layer='nope'")
    corruption = case["corruption"]
    if corruption in ("nan", "inf"):
        faults.append(f"{where} contains NaN")
    elif corruption == "negative":
        faults.append(f"{where} contains negative")
    elif corruption == "fraction":
        faults.append(f"{where} holds non-integer")
    elif corruption == "huge":
        faults.append(f"{where} holds a count of")
    return faults


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
@settings(max_examples=200, **SETTINGS)
@given(data=st.data())
def test_encode_gives_the_training_latents_or_names_the_bad_input(tiny, data):
    model, adata, latent = tiny
    other, kwargs, case = data.draw(encode_inputs(adata))
    faults = _encode_faults(other, kwargs, case)
    before = _snapshot(other)
    out = _call(lambda: cf.tl.encode(model, other, **kwargs), faults)
    written = not faults and not kwargs["copy"]
    _assert_unchanged(other, before, obsm_added=[kwargs["key_added"]] if written else [])
    if faults:
        assert kwargs["key_added"] not in other.obsm or kwargs["key_added"] in before["obsm"]
        return
    result = out if kwargs["copy"] else other
    assert (out is None) != kwargs["copy"]
    np.testing.assert_allclose(result.obsm[kwargs["key_added"]], latent[case["rows"]], rtol=1e-4, atol=1e-4)
