"""``cf.pl.embedding``: generated and real cells of one condition on one PCA or UMAP of the real cells."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._cells import condition_cells
from ._render import check_flags, finish, new_axes

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes

BASES = ("pca", "umap")
CONTROL_COLOR = "lightgrey"
REAL_COLOR = "#1f77b4"
GENERATED_COLOR = "#ff7f0e"


def embedding(
    pred: AnnData,
    real: AnnData,
    condition: str,
    *,
    basis: str = "pca",
    control: AnnData | None = None,
    n_comps: int = 50,
    size: float | None = None,
    seed: int = 0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | None:
    """Generated and real cells of one condition on one PCA or UMAP fitted on the real cells only.

    The real cells of the condition and the control cells of the same context are
    log-normalised and embedded (scanpy's ``pp.pca``; for ``basis="umap"``, a UMAP of these
    principal components with umap-learn, which scanpy uses); the generated cells are then
    projected onto that embedding (the PCA's loadings, then the fitted UMAP's ``transform``,
    as scanpy's ``tl.ingest`` does), so they never shape the axes
    they are judged on, as in :class:`~cellflow.evaluation.ConditionScorer`. Control cells are
    drawn in grey beneath, real cells next, generated cells on top: generated cells that
    overlap the real ones, and not the control, are what a good prediction looks like.

    Parameters
    ----------
    pred
        Generated cells, as :func:`cellflow.tl.generate` returns them (counts in ``X``, the
        perturbation and context in ``obs``). It may hold several conditions; those of
        ``condition`` must share one context (covariates, time point).
    real
        Real cells, set up with :func:`cellflow.pp.setup` (as for training); the cells of
        ``condition`` and the control cells in the generated cells' context are drawn.
    condition
        Perturbation label, e.g. ``"A+B"``; order within a combination does not matter.
    basis
        ``"pca"`` (first two components) or ``"umap"``.
    control
        Control cells to draw instead of ``real``'s control cells of the context.
    n_comps
        Principal components fitted (the UMAP's neighbour graph is built on them); clipped to
        what the number of real cells and genes allows.
    size
        Point size; default as scanpy, ``120000 / n_cells`` (within 3 and 40).
    seed
        Seed of the UMAP (and of the PCA's randomized solver, if scanpy chooses it).
    ax
        Axes to draw on; default a new figure.
    show
        Show the figure (``None``: ``scanpy.settings.autoshow``); a shown figure returns nothing.
    save
        Write the figure: a file path (its extension sets the format; ``.png`` when it has
        none), or ``True`` for ``scanpy.settings.figdir / "embedding.<format>"``.

    Returns
    -------
    The Axes, unless the figure was shown. Its three scatter collections are labelled
    ``"control"``, ``"real"`` and ``"generated"``.

    Raises
    ------
    ValueError
        An unknown ``basis``, a condition missing from ``pred`` or ``real``, generated cells of
        the condition in several contexts, ``pred`` and ``real`` with different genes, or
        ``real`` not set up.

    Examples
    --------
    >>> pred = cf.tl.generate(model, conditions=["A+B"], covariates={"cell_type": "K562"})  # doctest: +SKIP
    >>> cf.pl.embedding(pred, adata, "A+B", basis="umap")  # doctest: +SKIP
    """
    check_flags(show, save)
    if basis not in BASES:
        raise ValueError(f"basis={basis!r} is not one of {BASES}.")
    if isinstance(n_comps, bool) or not isinstance(n_comps, int | np.integer) or n_comps < 2:
        raise ValueError(f"n_comps must be an int of at least 2, got {n_comps!r}.")
    cells = condition_cells(pred, real, condition, control)
    fitted = np.concatenate([cells.control, cells.real])
    if fitted.shape[0] < 3:
        raise ValueError(
            f"Only {fitted.shape[0]} real cells (control and {cells.condition!r}) in this context; an embedding "
            "needs at least 3."
        )
    reference, projected = _embed(fitted, cells.generated, basis, n_comps, seed)
    n_control = cells.control.shape[0]
    groups = [
        ("control", reference[:n_control], CONTROL_COLOR),
        ("real", reference[n_control:], REAL_COLOR),
        ("generated", projected, GENERATED_COLOR),
    ]
    ax, own = new_axes(ax, (4.6, 4.0))
    total = sum(len(points) for _, points, _ in groups)
    size = float(np.clip(120000 / total, 3, 40)) if size is None else size
    for name, points, color in groups:
        alpha = 0.5 if name == "control" else 0.7
        ax.scatter(points[:, 0], points[:, 1], s=size, c=color, alpha=alpha, linewidths=0, label=name, rasterized=True)
    axis = "PC" if basis == "pca" else "UMAP"
    ax.set_xlabel(f"{axis}1")
    ax.set_ylabel(f"{axis}2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(cells.title)
    ax.legend(frameon=False, markerscale=max(1.0, 20 / size) ** 0.5, loc="best")
    return finish(ax.figure, ax, name="embedding", show=show, save=save, own=own)


def _embed(fitted: np.ndarray, generated: np.ndarray, basis: str, n_comps: int, seed: int):
    """2-D coordinates of the real cells (fitted) and of the generated cells (projected onto the fit)."""
    import anndata as ad
    import scanpy as sc

    reference = ad.AnnData(fitted.astype(np.float32))
    n_comps = min(n_comps, fitted.shape[0] - 1, fitted.shape[1] - 1)
    if n_comps < 2:
        raise ValueError(f"An embedding needs at least 3 genes and 3 real cells, got {fitted.shape[1]} genes.")
    sc.pp.pca(reference, n_comps=n_comps, random_state=seed)
    if basis == "pca":
        loadings = reference.varm["PCs"][:, :2]
        return reference.obsm["X_pca"][:, :2], (generated - fitted.mean(axis=0)) @ loadings
    from umap import UMAP  # scanpy's UMAP; its fitted model maps new cells onto the same embedding

    pcs = reference.obsm["X_pca"]
    fit = UMAP(n_neighbors=min(15, fitted.shape[0] - 1), random_state=seed, n_jobs=1).fit(pcs)
    loadings = reference.varm["PCs"]
    return fit.embedding_, fit.transform((generated - fitted.mean(axis=0)) @ loadings)
