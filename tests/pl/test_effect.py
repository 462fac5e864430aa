"""cf.pl.effect_scatter: per-gene changes, the labelled genes and the Pearson of the title, computed here by hand."""

from __future__ import annotations

import re

import numpy as np
import pytest

import cellflow as cf
from tests.pl._helpers import collection, curves, log_normalised


def _changes(held_out):
    """Observed and predicted change from the control of the context, from counts by hand."""
    adata, condition, context, pred = held_out
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    in_context = adata.obs["cell_type"].astype(str).to_numpy() == context["cell_type"]
    control = log_normalised(adata.X[(labels == "control") & in_context]).mean(axis=0)
    observed = log_normalised(adata.X[(labels == condition) & in_context]).mean(axis=0) - control
    predicted = log_normalised(pred.X).mean(axis=0) - control
    return observed, predicted


def _control(adata):
    return adata[adata.obs["perturbation"] == "control"]


def test_one_point_per_gene_at_its_observed_and_predicted_change(held_out):
    adata, condition, _, pred = held_out
    observed, predicted = _changes(held_out)
    ax = cf.pl.effect_scatter(pred, adata, _control(adata), condition=condition, show=False)
    points = collection(ax, "genes").get_offsets()
    assert len(points) == adata.n_vars
    np.testing.assert_allclose(points[:, 0], observed, atol=1e-5)
    np.testing.assert_allclose(points[:, 1], predicted, atol=1e-5)


def test_title_holds_the_pearson_of_the_changes(held_out):
    adata, condition, _, pred = held_out
    observed, predicted = _changes(held_out)
    r = np.corrcoef(observed, predicted)[0, 1]
    ax = cf.pl.effect_scatter(pred, adata, _control(adata), condition=condition, show=False)
    shown = float(re.search(r"Pearson r = (-?[0-9.]+)", ax.get_title()).group(1))
    assert shown == pytest.approx(r, abs=6e-4)
    assert condition in ax.get_title()


def test_labels_the_genes_that_change_most(held_out):
    adata, condition, _, pred = held_out
    observed, _ = _changes(held_out)
    top = set(adata.var_names[np.argsort(-np.abs(observed))[:7]])
    ax = cf.pl.effect_scatter(pred, adata, _control(adata), condition=condition, n_labels=7, show=False)
    assert {t.get_text() for t in ax.texts} == top
    none = cf.pl.effect_scatter(pred, adata, _control(adata), condition=condition, n_labels=0, show=False)
    assert len(none.texts) == 0


def test_identity_line_spans_the_points(held_out):
    adata, condition, _, pred = held_out
    observed, predicted = _changes(held_out)
    ax = cf.pl.effect_scatter(pred, adata, _control(adata), condition=condition, show=False)
    line = curves(ax)["identity"]
    x, y = line.get_xdata(), line.get_ydata()
    np.testing.assert_array_equal(x, y)
    tolerance = 1e-5  # the plot works in float32
    assert x[0] <= min(observed.min(), predicted.min()) + tolerance
    assert x[-1] >= max(observed.max(), predicted.max()) - tolerance


def test_control_defaults_to_the_control_cells_of_real(held_out):
    adata, condition, _, pred = held_out
    given = cf.pl.effect_scatter(pred, adata, _control(adata), condition=condition, show=False)
    default = cf.pl.effect_scatter(pred, adata, None, condition=condition, show=False)
    np.testing.assert_allclose(collection(default, "genes").get_offsets(), collection(given, "genes").get_offsets())
    assert default.get_title() == given.get_title()


def test_refuses_bad_input(held_out):
    adata, condition, _, pred = held_out
    control = _control(adata)
    with pytest.raises(ValueError, match="n_labels"):
        cf.pl.effect_scatter(pred, adata, control, condition=condition, n_labels=-1, show=False)
    with pytest.raises(TypeError, match="condition"):
        cf.pl.effect_scatter(pred, adata, control, show=False)
    with pytest.raises(ValueError, match="same genes"):
        cf.pl.effect_scatter(pred, adata, control[:, :-2].copy(), condition=condition, show=False)
    with pytest.raises(ValueError, match="no control cells"):
        cf.pl.effect_scatter(
            pred, adata, control[control.obs["cell_type"] != "type_0"], condition=condition, show=False
        )
    with pytest.raises(ValueError, match="pred has no cells of condition"):
        cf.pl.effect_scatter(pred, adata, control, condition="G0000+G0001", show=False)
