import numpy as np
import pytest
import scipy.sparse as sp
import torch

import cellflow as cf


@pytest.fixture(scope="module")
def combo(trained):
    return next(t for t in cf.pp.get_setup(trained.adata).conditions if "+" in t)


def test_output_contract(trained, combo):
    a, b = combo.split("+")
    pred = cf.tl.generate(trained, conditions=[f"{b}+{a}", a], n_cells=40, covariates={"cell_type": "type_0"}, seed=1)
    assert pred.shape == (80, len(trained.genes))
    assert list(pred.var_names) == list(trained.adata.var_names)
    assert sp.issparse(pred.X)
    values = pred.X.data
    assert np.all(values >= 0) and np.array_equal(values, np.round(values))
    assert list(pred.obs["perturbation"].unique()) == [combo, a]  # canonical labels
    assert set(pred.obs["cell_type"]) == {"type_0"}
    assert pred.obs_names.is_unique
    assert pred.obsm["X_cellflow"].shape == (80, 16)
    info = pred.uns["cellflow_generate"]
    # model.train() reflows by default, so a few Euler steps are the default solver.
    assert info["method"] == "euler" and info["steps"] == 4 and info["seed"] == 1 and info["backbone"] == "mlp"
    assert info["function_evaluations_per_condition"] == 4


def test_default_solver_follows_reflow_and_distillation(trained):
    from cellflow.flow import SamplingInfo

    assert trained.module.sampling == SamplingInfo(null_condition=True, reflow_rounds=1, distill_steps=0)
    solver = trained.module.sampling.solver
    assert solver() == ("euler", 4)
    assert solver("heun") == ("heun", 8)  # a named solver keeps the usual 8 steps
    assert solver(None, 2) == ("euler", 2)
    assert SamplingInfo(reflow_rounds=1, distill_steps=2).solver() == ("euler", 2)
    assert SamplingInfo().solver() == ("heun", 8)  # a flow that was never straightened: an accurate solver


def test_same_seed_same_cells_other_seed_other_cells(trained, combo):
    kwargs = {"conditions": [combo], "n_cells": 30, "covariates": {"cell_type": "type_1"}}
    a = cf.tl.generate(trained, seed=7, **kwargs)
    b = cf.tl.generate(trained, seed=7, **kwargs)
    c = cf.tl.generate(trained, seed=8, **kwargs)
    assert (a.X != b.X).nnz == 0
    assert (a.X != c.X).nnz > 0


@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "dopri5"])
def test_solvers_agree(trained, combo, method):
    """Every solver integrates the same ODE: the latents agree with a fine RK4 reference."""
    kwargs = {"conditions": [combo], "n_cells": 20, "covariates": {"cell_type": "type_0"}, "seed": 2}
    ref = cf.tl.generate(trained, method="rk4", steps=64, **kwargs).obsm["X_cellflow"]
    out = cf.tl.generate(trained, method=method, steps=32, **kwargs).obsm["X_cellflow"]
    scale = np.abs(ref).mean()
    assert np.abs(out - ref).mean() < 0.05 * scale


def test_expected_counts_option(trained, combo):
    pred = cf.tl.generate(
        trained, conditions=[combo], n_cells=10, covariates={"cell_type": "type_0"}, sample_counts=False
    )
    assert not np.array_equal(pred.X.data, np.round(pred.X.data))  # means, not draws


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"conditions": ["NOPE"]}, "cannot embed perturbation token.*'NOPE'.*token_embedding"),
        ({"conditions": []}, "conditions is empty"),
        ({"conditions": ["control"], "covariates": {}}, "covariates must give \\['cell_type'\\]"),
        ({"conditions": ["control"], "covariates": {"cell_type": "type_9"}}, "no control cells|not seen"),
        ({"conditions": ["control"], "covariates": {"cell_type": "type_0", "batch": "1"}}, "Unknown covariate"),
        ({"conditions": ["control"], "n_cells": 0}, "n_cells=0"),
        ({"conditions": ["control"], "times": [1.0]}, "without a time_key"),
        ({"conditions": ["control"], "doses": [1, 2]}, "one per condition"),
    ],
)
def test_bad_requests(trained, kwargs, message):
    kwargs = {"covariates": {"cell_type": "type_0"}} | kwargs
    with pytest.raises(ValueError, match=message):
        cf.tl.generate(trained, **kwargs)


def test_non_finite_latents_are_refused_before_decoding(trained_copy):
    with torch.no_grad():
        trained_copy.module.backbone.final_layer.linear.bias.fill_(float("nan"))  # a damaged model
    with pytest.raises(ValueError, match="non-finite latents for 'control'.*method='euler', steps=4"):
        cf.tl.generate(trained_copy, conditions=["control"], n_cells=5, covariates={"cell_type": "type_0"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_cells": 2.5}, "n_cells must be an int, got 2.5"),
        ({"n_cells": True}, "n_cells must be an int, got True"),
        ({"n_cells": "10"}, "n_cells must be an int, got '10'"),
        ({"n_cells": None}, "n_cells must be an int"),
        ({"seed": None}, "seed must be an int, got None"),
        ({"seed": 1.0}, "seed must be an int"),
        ({"seed": False}, "seed must be an int"),
        ({"steps": 2.5}, "steps must be an int"),
        ({"guidance": "2"}, "guidance must be a number"),
        ({"covariates": "type_0"}, "covariates must be a mapping"),
        ({"conditions": [1]}, r"conditions\[0\]=1 is not a perturbation label"),
        ({"doses": "0.5+1"}, r"doses='0.5\+1' is a string; pass a list .* per condition"),
        ({"doses": 0.5}, "doses must be a list"),
        ({"doses": [None]}, r"doses\[0\]=None must be a number"),
        ({"sample_counts": "no"}, "sample_counts must be True"),
        ({"distributed": "yes"}, "distributed must be True or False"),
    ],
)
def test_arguments_of_the_wrong_type(trained, kwargs, message):
    kwargs = {"conditions": ["control"], "n_cells": 3, "covariates": {"cell_type": "type_0"}} | kwargs
    with pytest.raises(TypeError, match=message):
        cf.tl.generate(trained, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed=-1 must be between 0 and 2\\*\\*63 - 1"),
        ({"seed": 2**64}, "seed=.* must be between"),
        ({"method": "rk45"}, "method='rk45' is not a solver"),
        ({"steps": 0}, "steps=0 must be at least 1"),
        ({"conditions": ["A+"]}, r"conditions\[0\]: .*empty token"),
        ({"conditions": ["control", "NOPE"]}, r"conditions: The model cannot embed .*'NOPE'"),
        ({"covariates": {"cell_type": "type_9"}}, r"covariates\['cell_type'\]='type_9' .* known values: \['type_0'"),
    ],
)
def test_bad_values_name_their_argument(trained, kwargs, message):
    kwargs = {"conditions": ["control"], "n_cells": 3, "covariates": {"cell_type": "type_0"}} | kwargs
    with pytest.raises(ValueError, match=message):
        cf.tl.generate(trained, **kwargs)


def test_numpy_integers_are_ints(trained, combo):
    pred = cf.tl.generate(
        trained, conditions=[combo], n_cells=np.int64(3), seed=np.int32(4), covariates={"cell_type": "type_1"}
    )
    assert pred.shape == (3, len(trained.genes)) and pred.uns["cellflow_generate"]["seed"] == 4


@pytest.mark.parametrize(("n_cells", "n_conditions"), [(10**9, 1), (2_000_000_000 // (2 * 60) + 1, 2)])
def test_too_large_requests_are_refused_before_any_work(trained, monkeypatch, n_cells, n_conditions):
    from cellflow.tl._generate import MAX_ENTRIES

    assert MAX_ENTRIES == 2e9 and len(trained.genes) == 60
    monkeypatch.setattr(trained.module, "sample", lambda *a, **k: pytest.fail("generated before refusing"))
    conditions = ["control", combo_of(trained)][:n_conditions]
    with pytest.raises(
        ValueError, match=r"n_cells=\d+ for .* condition.* more than one call generates.*smaller batches"
    ):
        cf.tl.generate(trained, conditions=conditions, n_cells=n_cells, covariates={"cell_type": "type_0"})


def combo_of(model):
    return next(t for t in model.setup.conditions if "+" in t)


def test_largest_request_is_not_refused(trained, monkeypatch):
    """Exactly MAX_ENTRIES passes the check (the sampler is stubbed: nothing is generated)."""

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(trained.module, "sample", stop)
    with pytest.raises(Stop):
        cf.tl.generate(trained, conditions=["control"], n_cells=2_000_000_000 // 60, covariates={"cell_type": "type_0"})


def test_known_covariate_values_without_control_cells(trained_copy):
    reference = trained_copy.module.reference
    reference.contexts = [reference.contexts[0]]  # as if type_1 had no control cells
    with pytest.raises(
        ValueError, match=r"no control cells.*contexts with control cells: \[\{'cell_type': 'type_0'\}\]"
    ):
        cf.tl.generate(trained_copy, conditions=["control"], n_cells=3, covariates={"cell_type": "type_1"})


@pytest.mark.parametrize("doses", [["0.5"], [2], ["1+0.5"]])
def test_doses_need_a_dose_key(trained, combo, doses):
    assert trained.setup.dose_key is None
    conditions = [combo] if "+" in str(doses[0]) else [combo.split("+")[0]]
    with pytest.raises(ValueError, match=r"doses=.*set up without a dose_key, so it knows dose 1 only"):
        cf.tl.generate(trained, conditions=conditions, doses=doses, n_cells=3, covariates={"cell_type": "type_0"})


def test_dose_one_is_what_a_model_without_dose_key_knows(trained, combo):
    kwargs = {"conditions": [combo, "control"], "n_cells": 4, "covariates": {"cell_type": "type_0"}, "seed": 3}
    with_doses = cf.tl.generate(trained, doses=["1+1", "0"], **kwargs)
    without = cf.tl.generate(trained, **kwargs)
    assert (with_doses.X != without.X).nnz == 0


def test_doses_pass_for_a_model_with_a_dose_key(trained_copy, combo):
    import dataclasses

    trained_copy.setup = dataclasses.replace(trained_copy.setup, dose_key="dose")
    trained_copy.dose_range = (0.5, 1.0)
    pred = cf.tl.generate(
        trained_copy, conditions=[combo], doses=["0.5+1"], n_cells=3, covariates={"cell_type": "type_0"}
    )
    assert list(pred.obs["dose"].unique()) == ["0.5+1"]


def test_doses_outside_the_training_range_warn_that_the_prediction_extrapolates(trained_copy):
    import dataclasses
    import warnings

    trained_copy.setup = dataclasses.replace(trained_copy.setup, dose_key="dose")
    trained_copy.dose_range = (0.5, 1.0)  # what a screen dosed at 0.5 and 1 records
    kwargs = {"conditions": [trained_copy.codec.tokens[0]], "n_cells": 5, "covariates": {"cell_type": "type_0"}}
    with pytest.warns(UserWarning, match=r"doses \['2'\] lie outside the doses of the training data \[0.5, 1\]"):
        cf.tl.generate(trained_copy, doses=[2.0], **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the range: no warning
        cf.tl.generate(trained_copy, doses=[0.75], **kwargs)


def test_the_training_dose_range_is_recorded_and_saved(trained, tmp_path):
    assert trained.dose_range == (1.0, 1.0)  # the simulated screen has no doses: every token at dose 1
    trained.save(tmp_path / "m")
    assert cf.CellFlow.load(tmp_path / "m").dose_range == (1.0, 1.0)
