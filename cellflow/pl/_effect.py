"""``cf.pl.effect_scatter``: predicted against observed change from control, gene by gene."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..metrics import pearson_delta
from ._cells import condition_cells
from ._render import check_flags, finish, new_axes

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes


def effect_scatter(
    pred: AnnData,
    real: AnnData,
    control: AnnData | None = None,
    condition: str | None = None,
    *,
    n_labels: int = 10,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | None:
    """Predicted against observed change of every gene from control, with the Pearson correlation.

    For each gene, the observed change is the mean log-normalised expression of the real
    cells of ``condition`` minus that of the control cells, and the predicted change the
    same for the generated cells (the log fold change of the mean expression, as scored by
    :func:`cellflow.metrics.pearson_delta`, whose value is the title's Pearson ``r``). Both
    use the same control cells. Points on the identity line are genes predicted exactly;
    the ``n_labels`` genes with the largest observed change are named, since a prediction is
    judged first on the genes the perturbation moves most.

    Parameters
    ----------
    pred
        Generated cells, as :func:`cellflow.tl.generate` returns them; those of
        ``condition`` must share one context.
    real
        Real cells, set up with :func:`cellflow.pp.setup`; the cells of ``condition`` in the
        generated cells' context are compared.
    control
        Control cells (counts, the same genes); cells of other contexts, and cells not labelled
        as control where the perturbation column is present, are left out. ``None`` takes
        the control cells of ``real`` in the generated cells' context.
    condition
        Perturbation label, e.g. ``"A+B"``; order within a combination does not matter.
    n_labels
        Genes to name, by largest absolute observed change (0: none).
    ax
        Axes to draw on; default a new figure.
    show
        Show the figure (``None``: ``scanpy.settings.autoshow``); a shown figure returns nothing.
    save
        Write the figure: a file path (its extension sets the format; ``.png`` when it has
        none), or ``True`` for ``scanpy.settings.figdir / "effect_scatter.<format>"``.

    Returns
    -------
    The Axes, unless the figure was shown: one point per gene (observed change on x,
    predicted on y), a text per named gene, the identity line.

    Raises
    ------
    ValueError
        A condition missing from ``pred`` or ``real``, no control cells in the context,
        inputs with different genes, ``real`` not set up, or ``n_labels`` negative.

    Examples
    --------
    >>> ctrl = adata[adata.obs["perturbation"] == "control"]  # doctest: +SKIP
    >>> cf.pl.effect_scatter(pred, adata, ctrl, condition="A+B", n_labels=15)  # doctest: +SKIP
    """
    check_flags(show, save)
    if condition is None:
        raise TypeError("effect_scatter needs condition=..., the perturbation label to compare (e.g. 'A+B').")
    if isinstance(n_labels, bool) or not isinstance(n_labels, int | np.integer) or n_labels < 0:
        raise ValueError(f"n_labels must be an int >= 0, got {n_labels!r}.")
    cells = condition_cells(pred, real, condition, control)
    reference = cells.control.mean(axis=0)
    real_mean, generated_mean = cells.real.mean(axis=0), cells.generated.mean(axis=0)
    observed, predicted = real_mean - reference, generated_mean - reference
    r = pearson_delta(generated_mean, real_mean, reference)  # the benchmark's metric, on mean profiles

    ax, own = new_axes(ax, (4.4, 4.2))
    ax.scatter(observed, predicted, s=10, c="#4c72b0", alpha=0.7, linewidths=0, label="genes")
    low = float(min(observed.min(), predicted.min(), 0.0))
    high = float(max(observed.max(), predicted.max(), 0.0))
    ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--", label="identity")
    ax.axhline(0.0, color="lightgrey", lw=0.5, zorder=0)
    ax.axvline(0.0, color="lightgrey", lw=0.5, zorder=0)
    for i in np.argsort(-np.abs(observed), kind="stable")[: min(n_labels, len(observed))]:
        ax.annotate(
            cells.genes[i],
            (observed[i], predicted[i]),
            xytext=(3, 3),
            textcoords="offset points",
            fontsize=7,
        )
    ax.set_xlabel("observed change (log expression)")
    ax.set_ylabel("predicted change (log expression)")
    ax.set_title(f"{cells.title}\nPearson r = {r:.3f}", fontsize=10)
    return finish(ax.figure, ax, name="effect_scatter", show=show, save=save, own=own)
