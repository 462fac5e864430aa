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
