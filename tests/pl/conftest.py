"""Fixtures of the plot tests: the Agg backend, figures closed after each test, a prediction of a held-out condition."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


@pytest.fixture(scope="session")
def held_out(screen, trained):
    """``(adata, condition, context, pred)``: 40 generated cells of a held-out combination in one cell type."""
    import cellflow as cf

    adata, _, split, _ = screen
    condition = split.held_out[0]
    context = {"cell_type": "type_0"}
    pred = cf.tl.generate(trained, conditions=[condition], n_cells=40, covariates=context, seed=0)
    return adata, condition, context, pred
