"""The cell-mean baseline is the Virtual Cell Challenge's, as cell-eval builds it."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import cellflow as cf
from cellflow.evaluation import CellMeanBaseline
from cellflow.metrics import log_normalize


def _screen(labels, contexts=None, n_genes=12, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.uniform(1, 8, size=n_genes), size=(len(labels), n_genes)).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    keys = []
    if contexts is not None:
        obs["cell_type"], keys = contexts, ["cell_type"]
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs)
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=keys)
    return adata


def test_cell_mean_equals_cell_evals_baseline():
    import cell_eval

    labels = ["control"] * 30 + ["A"] * 10 + ["B"] * 25 + ["A+B"] * 15
    adata = _screen(labels, seed=1)
    ours = CellMeanBaseline().fit(adata).predict("C", n_cells=7)

    # cell-eval reads log-normalised data with its own column names.
    theirs_input = ad.AnnData(
        sp.csr_matrix(log_normalize(adata.X).astype(np.float32)),
        obs=pd.DataFrame({"target_gene": np.where(np.array(labels) == "control", "non-targeting", labels)}),
        var=pd.DataFrame(index=adata.var_names),
    )
    theirs = cell_eval.build_base_mean_adata(theirs_input)
    perturbed = theirs[(theirs.obs["target_gene"] != "non-targeting").to_numpy()].X
    perturbed = perturbed.toarray() if sp.issparse(perturbed) else np.asarray(perturbed)
    assert ours.shape == (7, adata.n_vars)
    np.testing.assert_allclose(ours, np.broadcast_to(perturbed[0], ours.shape), rtol=1e-5)
    # Constant cells: one profile for every cell and every condition.
    assert np.all(perturbed == perturbed[0]) and np.all(ours == ours[0])


def test_cell_mean_is_computed_per_context_and_falls_back_to_all_contexts():
    labels = ["control"] * 10 + ["A"] * 10 + ["control"] * 10 + ["B"] * 10
    contexts = ["x"] * 20 + ["y"] * 20
    adata = _screen(labels, contexts=contexts, seed=2)
    baseline = CellMeanBaseline().fit(adata)
    x = log_normalize(adata.X)
    obs = adata.obs
    in_y = (obs["cell_type"] == "y").to_numpy()
    bulks_y = [x[in_y & (obs["perturbation"] == label).to_numpy()].mean(0) for label in ("control", "B")]
    np.testing.assert_allclose(
        baseline.predict("A", covariates={"cell_type": "y"}, n_cells=2)[0], np.mean(bulks_y, 0), rtol=1e-6
    )
    all_bulks = [
        x[((obs["cell_type"] == c) & (obs["perturbation"] == label)).to_numpy()].mean(0)
        for c, label in (("x", "control"), ("x", "A"), ("y", "control"), ("y", "B"))
    ]
    unseen = baseline.predict("A", covariates={"cell_type": "z"}, n_cells=1)[0]
    np.testing.assert_allclose(unseen, np.mean(all_bulks, 0), rtol=1e-6)
