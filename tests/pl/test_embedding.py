"""cf.pl.embedding: which cells are drawn, where the generated ones land, and what it refuses."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import cellflow as cf
from tests.pl._helpers import collection


def _counts(ax) -> dict[str, int]:
    return {name: len(collection(ax, name).get_offsets()) for name in ("control", "real", "generated")}


def _as_pred(adata, cells) -> ad.AnnData:
    """Real cells dressed as cf.tl.generate's output (counts in X, perturbation and context in obs)."""
    obs = adata.obs.loc[cells, ["perturbation", "cell_type"]].copy()
    return ad.AnnData(adata.X[np.flatnonzero(cells)].copy(), obs=obs, var=pd.DataFrame(index=adata.var_names.copy()))


def test_draws_the_condition_and_the_control_cells_of_the_context(held_out):
    adata, condition, context, pred = held_out
    obs = adata.obs
    in_context = obs["cell_type"].astype(str) == context["cell_type"]
    labels = obs["perturbation"].astype(str)
    expected = {
        "control": int(((labels == "control") & in_context).sum()),
        "real": int(((labels == condition) & in_context).sum()),
        "generated": pred.n_obs,
    }
    ax = cf.pl.embedding(pred, adata, condition, show=False)
    assert _counts(ax) == expected
    assert condition in ax.get_title() and context["cell_type"] in ax.get_title()
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC1", "PC2")


def test_real_cells_given_as_predictions_land_on_themselves(held_out):
    """The generated cells are projected onto the real cells' PCA: the real cells themselves land where they are."""
    adata, condition, context, _ = held_out
    cells = (adata.obs["perturbation"].astype(str) == condition).to_numpy()
    cells &= (adata.obs["cell_type"].astype(str) == context["cell_type"]).to_numpy()
    ax = cf.pl.embedding(_as_pred(adata, cells), adata, condition, show=False)
    real, generated = collection(ax, "real").get_offsets(), collection(ax, "generated").get_offsets()
    np.testing.assert_allclose(generated, real, atol=1e-4)


def test_generated_cells_do_not_move_the_axes(held_out):
    adata, condition, _, pred = held_out
    first = cf.pl.embedding(pred, adata, condition, show=False)
    second = cf.pl.embedding(pred[:10].copy(), adata, condition, show=False)
    for name in ("control", "real"):
        np.testing.assert_allclose(collection(first, name).get_offsets(), collection(second, name).get_offsets())
    assert len(collection(second, "generated").get_offsets()) == 10


def test_label_order_and_gene_order_do_not_matter(held_out):
    adata, condition, _, pred = held_out
    a, b = condition.split("+")
    reference = cf.pl.embedding(pred, adata, condition, show=False)
    shuffled = pred[:, pred.var_names[::-1]].copy()
    other = cf.pl.embedding(shuffled, adata, f"{b}+{a}", show=False)
    for name in ("control", "real", "generated"):
        np.testing.assert_allclose(collection(other, name).get_offsets(), collection(reference, name).get_offsets())


def test_inputs_are_not_modified(held_out):
    adata, condition, _, pred = held_out
    before = (adata.X.copy(), dict(adata.uns), list(adata.obsm), pred.X.copy(), list(pred.obsm))
    cf.pl.embedding(pred, adata, condition, show=False)
    assert (adata.X != before[0]).nnz == 0 and (pred.X != before[3]).nnz == 0
    assert list(adata.uns) == list(before[1]) and list(adata.obsm) == before[2] and list(pred.obsm) == before[4]


def test_umap_is_fitted_on_real_cells_and_maps_the_generated_ones(held_out, monkeypatch):
    """A stand-in for umap-learn's UMAP records what it is fitted on and what it maps (the real one compiles slowly)."""
    import umap

    seen = {}

    class FakeUMAP:
        def __init__(self, **kwargs):
            seen["kwargs"] = kwargs

        def fit(self, x):
            seen["fit"] = x.shape
            self.embedding_ = x[:, :2] * 2
            return self

        def transform(self, x):
            seen["transform"] = x.shape
            return x[:, :2] * 2

    monkeypatch.setattr(umap, "UMAP", FakeUMAP)
    adata, condition, _, pred = held_out
    ax = cf.pl.embedding(pred, adata, condition, basis="umap", seed=3, show=False)
    counts = _counts(ax)
    assert seen["fit"][0] == counts["control"] + counts["real"]  # the real cells only
    assert seen["transform"][0] == counts["generated"] == pred.n_obs
    assert seen["kwargs"]["random_state"] == 3
    pca = cf.pl.embedding(pred, adata, condition, show=False)
    np.testing.assert_allclose(
        collection(ax, "generated").get_offsets(), 2 * collection(pca, "generated").get_offsets(), rtol=1e-4, atol=1e-4
    )
    assert ax.get_xlabel() == "UMAP1"


@pytest.mark.slow
def test_real_umap(held_out):
    adata, condition, _, pred = held_out
    ax = cf.pl.embedding(pred, adata, condition, basis="umap", show=False)
    assert len(collection(ax, "generated").get_offsets()) == pred.n_obs
    assert np.isfinite(collection(ax, "generated").get_offsets()).all()


def test_refuses_bad_input(held_out, screen):
    adata, condition, _, pred = held_out
    with pytest.raises(ValueError, match="pred has no cells of condition"):
        cf.pl.embedding(pred, adata, "G9999", show=False)
    with pytest.raises(ValueError, match="is the control"):
        cf.pl.embedding(pred, adata, "control", show=False)
    with pytest.raises(ValueError, match="basis"):
        cf.pl.embedding(pred, adata, condition, basis="tsne", show=False)
    with pytest.raises(ValueError, match="same genes"):
        cf.pl.embedding(pred[:, :-1].copy(), adata, condition, show=False)
    with pytest.raises(TypeError, match="AnnData"):
        cf.pl.embedding(pred.X, adata, condition, show=False)
    bare = adata.copy()
    del bare.uns["cellflow"]
    with pytest.raises(ValueError, match="not set up"):
        cf.pl.embedding(pred, bare, condition, show=False)
    _, _, _, train = screen  # the held-out condition was never measured in the training cells
    with pytest.raises(ValueError, match="real has no cells of condition"):
        cf.pl.embedding(pred, train, condition, show=False)
    two = ad.concat([pred, pred], index_unique="-")
    two.obs["cell_type"] = ["type_0"] * pred.n_obs + ["type_1"] * pred.n_obs
    with pytest.raises(ValueError, match="several contexts"):
        cf.pl.embedding(two, adata, condition, show=False)
