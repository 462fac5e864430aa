"""cf.tl.evaluate against metrics computed directly on a tiny example."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA

import cellflow as cf
from cellflow import metrics as m


def _cells(labels, contexts, rng, shift=0.0):
    counts = rng.poisson(4.0 + shift, size=(len(labels), 12)).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels, "cell_type": contexts}, index=[f"c{i}" for i in range(len(labels))])
    adata = ad.AnnData(counts, obs=obs)
    adata.var_names = [f"g{i}" for i in range(12)]
    return adata


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    labels = ["control"] * 20 + ["A"] * 10 + ["B+A"] * 10 + ["control"] * 20 + ["A"] * 10
    contexts = ["x"] * 40 + ["y"] * 30
    truth = _cells(labels, contexts, rng)
    pred = _cells(["A"] * 8 + ["A+B"] * 8 + ["A"] * 8, ["x"] * 16 + ["y"] * 8, rng, shift=1.0)
    return pred, truth


def test_matches_direct_metrics(pair):
    pred, truth = pair
    cf.pp.setup(truth, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    table = cf.tl.evaluate(pred, truth, metrics=["pearson_delta", "mse", "mse_top_k", "energy_distance"], top_k=5)
    assert list(table.columns) == [
        "condition", "cell_type", "n_pred", "n_truth", "pearson_delta", "mse", "mse_top_k", "energy_distance"
    ]  # fmt: skip
    assert sorted(zip(table["condition"], table["cell_type"])) == [("A", "x"), ("A", "y"), ("A+B", "x")]

    px, tx = m.log_normalize(pred.X), m.log_normalize(truth.X)
    t_labels, t_ctx = truth.obs["perturbation"].to_numpy(), truth.obs["cell_type"].to_numpy()
    p_labels, p_ctx = pred.obs["perturbation"].to_numpy(), pred.obs["cell_type"].to_numpy()
    real = tx[t_labels != "control"]
    pca = PCA(n_components=12, random_state=0).fit(np.concatenate([real, tx[t_labels == "control"]]))
    for row in table.itertuples():
        truth_label = "B+A" if row.condition == "A+B" else row.condition
        t = tx[(t_labels == truth_label) & (t_ctx == row.cell_type)]
        p = px[(p_labels == row.condition) & (p_ctx == row.cell_type)]
        c = tx[(t_labels == "control") & (t_ctx == row.cell_type)]
        assert row.n_truth == len(t) and row.n_pred == len(p)
        assert row.pearson_delta == pytest.approx(m.pearson_delta(p, t, c), rel=1e-4)
        assert row.mse == pytest.approx(np.mean((p.mean(0) - t.mean(0)) ** 2), rel=1e-4)
        top = np.argsort(-np.abs(t.mean(0) - c.mean(0)))[:5]
        assert row.mse_top_k == pytest.approx(np.mean((p.mean(0)[top] - t.mean(0)[top]) ** 2), rel=1e-4)
        assert row.energy_distance == pytest.approx(m.energy_distance(pca.transform(p), pca.transform(t)), rel=1e-4)


def test_perfect_prediction_and_explicit_keys(pair):
    _, truth = pair
    table = cf.tl.evaluate(truth, truth, perturbation_key="perturbation", metrics=["r2", "mse", "pearson_delta"])
    # no covariates: one row per condition, every prediction identical to the truth
    assert set(table["condition"]) == {"A", "A+B"}
    assert np.allclose(table["mse"], 0.0) and np.allclose(table["r2"], 1.0) and np.allclose(table["pearson_delta"], 1)


def test_control_anndata(pair):
    pred, truth = pair
    controls = truth[truth.obs["perturbation"] == "control"].copy()
    a = cf.tl.evaluate(pred, truth, perturbation_key="perturbation", covariate_keys=["cell_type"], metrics=["mmd"])
    b = cf.tl.evaluate(
        pred, truth, control=controls, perturbation_key="perturbation", covariate_keys=["cell_type"], metrics=["mmd"]
    )
    pd.testing.assert_frame_equal(a, b)


def test_bad_input(pair):
    pred, truth = pair
    with pytest.raises(ValueError, match="perturbation_key"):
        cf.tl.evaluate(pred, truth)
    with pytest.raises(ValueError, match="Unknown metric"):
        cf.tl.evaluate(pred, truth, perturbation_key="perturbation", metrics=["accuracy"])
    with pytest.raises(ValueError, match="same genes"):
        cf.tl.evaluate(pred[:, ::-1].copy(), truth, perturbation_key="perturbation")
    with pytest.raises(ValueError, match="No control"):
        cf.tl.evaluate(pred, truth, perturbation_key="perturbation", control="ctrl")
