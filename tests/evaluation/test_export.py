"""export_cell_eval: the files are what cell-eval reads, and cell-eval's scores of them are ours."""

from __future__ import annotations

import argparse

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from cell_eval._cli import parse_args_run, run_evaluation
from scipy import sparse

from cellflow.evaluation import export_cell_eval
from cellflow.metrics import de_scores, differential_expression, discrimination_score, log_normalize, mae_mean

PERTURBATIONS = ["A", "B", "C"]
GENES = [f"g{i}" for i in range(30)] + ["A", "B"]  # the targets of A and B are measured genes


def _counts(n_cells: int, labels: list[str], cell_types: list[str], seed: int) -> ad.AnnData:
    """Poisson counts: each perturbation X raises genes of its own and knocks its target gene down."""
    rng = np.random.default_rng(seed)
    rows, obs = [], []
    for cell_type in cell_types:
        for label in labels:
            rate = np.full(len(GENES), 4.0)
            if label != "control":
                start = 5 * "ABCD".index(label)
                rate[start : start + 5] = 15.0
                if label in GENES:
                    rate[GENES.index(label)] = 0.3
            rows.append(rng.poisson(rate, (n_cells, len(GENES))))
            obs += [(label, cell_type)] * n_cells
    frame = pd.DataFrame(obs, columns=["perturbation", "cell_type"], index=[f"s{seed}-{i}" for i in range(len(obs))])
    return ad.AnnData(sparse.csr_matrix(np.vstack(rows).astype(np.float32)), obs=frame, var=pd.DataFrame(index=GENES))


@pytest.fixture(scope="module")
def data():
    real = _counts(40, ["control", *PERTURBATIONS, "D"], ["x", "y"], seed=0)  # D: measured, not predicted
    pred = _counts(40, PERTURBATIONS, ["x", "y"], seed=1)  # no control cells, as cf.tl.generate
    pred.obs["perturbation"] = pred.obs["perturbation"].replace({"A": "B", "B": "A"})  # a wrong prediction
    pred = pred[:, GENES[::-1]].copy()  # genes in another order
    return real, pred


def test_files_have_cell_eval_layout(data, tmp_path):
    real, pred = data
    before = (real.copy(), pred.copy())
    paths = export_cell_eval(pred, real, tmp_path, celltype_key="cell_type")
    assert set(paths) == {"real", "pred"} and paths["real"].name == "real.h5ad"
    written_real, written_pred = ad.read_h5ad(paths["real"]), ad.read_h5ad(paths["pred"])
    for written in (written_real, written_pred):
        assert list(written.var_names) == GENES  # real's genes, in real's order
        assert list(written.obs.columns) == ["target_gene", "celltype"]
        assert sparse.issparse(written.X) and written.X.dtype == np.float32
    # Real: the predicted perturbations and the control cells, D left out; control labelled non-targeting.
    assert written_real.obs.groupby(["target_gene", "celltype"]).size().to_dict() == {
        (p, c): 40 for p in ["A", "B", "C", "non-targeting"] for c in ["x", "y"]
    }
    # The prediction got the real control cells of each cell type (cell-eval tests it against them).
    control = written_pred.obs["target_gene"].to_numpy() == "non-targeting"
    np.testing.assert_array_equal(
        written_pred.X[control].toarray(),
        written_real.X[(written_real.obs["target_gene"] == "non-targeting").to_numpy()].toarray(),
    )
    # log1p(counts scaled to 1e4 per cell): expm1 of every row sums to 1e4 over the genes written.
    totals = np.expm1(written_pred.X[~control].toarray().astype(np.float64)).sum(axis=1)
    np.testing.assert_allclose(totals, 1e4, rtol=1e-4)
    expected = log_normalize(pred[:, GENES].X)
    np.testing.assert_allclose(written_pred.X[~control].toarray(), expected, rtol=1e-6)
    # The inputs are untouched.
    for original, now in zip(before, (real, pred)):
        assert (original.X != now.X).nnz == 0 and original.obs.equals(now.obs)


def test_cell_eval_scores_the_files_as_we_do(data, tmp_path):
    real, pred = data
    paths = export_cell_eval(pred, real, tmp_path / "files", celltype_key="cell_type")
    out = tmp_path / "cell_eval"
    parser = argparse.ArgumentParser()
    parse_args_run(parser)
    args = ["-ap", str(paths["pred"]), "-ar", str(paths["real"]), "--profile", "vcc", "-o", str(out)]
    run_evaluation(parser.parse_args([*args, "--celltype-col", "celltype"]))  # cell-eval's own command
    written_real, written_pred = ad.read_h5ad(paths["real"]), ad.read_h5ad(paths["pred"])
    for cell_type in ("x", "y"):
        theirs = pd.read_csv(out / f"{cell_type}_results.csv").set_index("perturbation").loc[PERTURBATIONS]

        def cells(adata, label, cell_type=cell_type):
            where = (adata.obs["target_gene"] == label) & (adata.obs["celltype"] == cell_type)
            return adata.X[where.to_numpy()].toarray().astype(np.float64)

        real_control, pred_control = cells(written_real, "non-targeting"), cells(written_pred, "non-targeting")
        overlap, mae = [], []
        for label in PERTURBATIONS:
            true_de = differential_expression(cells(written_real, label), real_control, genes=GENES)
            pred_de = differential_expression(cells(written_pred, label), pred_control, genes=GENES)
            overlap.append(de_scores(pred_de, true_de)["overlap_at_N"])
            mae.append(mae_mean(cells(written_pred, label), cells(written_real, label)))
        true_changes = np.stack([cells(written_real, p).mean(0) - real_control.mean(0) for p in PERTURBATIONS])
        pred_changes = np.stack([cells(written_pred, p).mean(0) - pred_control.mean(0) for p in PERTURBATIONS])
        exclude = np.array(GENES)[None, :] == np.array(PERTURBATIONS)[:, None]
        discrimination = discrimination_score(pred_changes, true_changes, exclude=exclude, convention="cell_eval")
        np.testing.assert_allclose(theirs["overlap_at_N"], overlap, rtol=1e-12)
        np.testing.assert_allclose(theirs["discrimination_score_l1"], discrimination, rtol=1e-12)
        np.testing.assert_allclose(theirs["mae"], mae, rtol=1e-5)  # cell-eval averages float32 cells in float32
        # A and B were swapped, C was not: cell-eval ranks C first and the swapped ones last.
        assert theirs.loc["C", "discrimination_score_l1"] == 1.0
        assert theirs.loc["A", "discrimination_score_l1"] < 1.0 and theirs.loc["C", "overlap_at_N"] > 0.5


def test_several_predictions_and_log_normalised_input(data, tmp_path):
    real, pred = data
    log_real, log_pred = real.copy(), pred.copy()
    log_real.X, log_pred.X = sparse.csr_matrix(log_normalize(real.X)), log_normalize(pred.X)
    control = log_real[log_real.obs["perturbation"] == "control"]
    with_control = ad.concat([log_pred, control])  # a prediction that brings its own control cells
    paths = export_cell_eval(
        {"model": log_pred, "other": with_control}, log_real, tmp_path, counts=False, celltype_key="cell_type"
    )
    assert set(paths) == {"real", "pred_model", "pred_other"}
    model, other = ad.read_h5ad(paths["pred_model"]), ad.read_h5ad(paths["pred_other"])
    assert model.n_obs == other.n_obs == pred.n_obs + control.n_obs
    np.testing.assert_allclose(model.X.toarray(), other.X.toarray(), rtol=1e-6)
    # Without a cell-type column: one context, no celltype column.
    lone = export_cell_eval(log_pred[log_pred.obs["cell_type"] == "x"], log_real, tmp_path / "x", counts=False)
    assert list(ad.read_h5ad(lone["pred"]).obs.columns) == ["target_gene"]


def test_export_errors(data, tmp_path):
    real, pred = data
    export_cell_eval(pred, real, tmp_path)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_cell_eval(pred, real, tmp_path)
    export_cell_eval(pred, real, tmp_path, overwrite=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="is a file"):
        export_cell_eval(pred, real, tmp_path / "file")
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="lacks 1 gene"):
        export_cell_eval(pred[:, 1:], real, fresh)
    unknown = pred.copy()
    unknown.obs["perturbation"] = unknown.obs["perturbation"].astype(str).replace({"C": "Z"})
    with pytest.raises(ValueError, match="does not have"):
        export_cell_eval(unknown, real, fresh)
    with pytest.raises(ValueError, match="lacks"):
        export_cell_eval({"a": pred, "b": pred[pred.obs["perturbation"] != "C"]}, real, fresh)
    with pytest.raises(ValueError, match="no control cells"):
        export_cell_eval(pred, real[real.obs["perturbation"] != "control"], fresh)
    log_real = real.copy()
    log_real.X = log_normalize(real.X)
    with pytest.raises(ValueError, match="too large"):
        export_cell_eval(pred, log_real, fresh, counts=False)  # counts up to more than 15
    binary = pred.copy()
    binary.X = (pred.X > 4).astype(np.float32)
    with pytest.raises(ValueError, match="whole numbers"):
        export_cell_eval(binary, log_real, fresh, counts=False)  # cell-eval would normalise 0/1 counts again
    negative = pred.copy()
    negative.X = -log_normalize(pred.X)
    with pytest.raises(ValueError, match="negative"):
        export_cell_eval(negative, log_real, fresh, counts=False)
    with pytest.raises(KeyError, match="no obs column"):
        export_cell_eval(pred, real, fresh, celltype_key="batch")
    renamed = real.copy()
    renamed.obs["perturbation"] = renamed.obs["perturbation"].astype(str).replace({"D": "non-targeting"})
    with pytest.raises(ValueError, match="rename it"):
        export_cell_eval(pred, renamed, fresh)
    assert not fresh.exists()  # nothing written on an error
