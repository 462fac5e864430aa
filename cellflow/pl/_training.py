"""``cf.pl.training``: the VAE's and the flow's loss curves, from the model's training history."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._render import check_flags, finish

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: The curves drawn, by panel: ``(key in model.history, legend label)``. Each curve is a list of
#: losses (one per epoch or step, counted from 1) or a list of ``[epoch or step, loss]`` pairs.
CURVES = {
    "VAE": (("vae_loss", "training"), ("vae_validation_loss", "validation")),
    "flow": (("flow_loss", "flow"), ("flow_validation_loss", "flow validation"), ("reflow_loss", "reflow")),
}
X_LABELS = {"VAE": "epoch", "flow": "step"}


def training(
    model,
    *,
    smooth: int = 1,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Figure | None:
    """Loss curves of the VAE (per epoch) and of the flow (per step), one panel each.

    The curves come from ``model.history``: ``vae_loss`` (scvi-tools' training ELBO) and
    ``vae_validation_loss`` in the VAE's panel; ``flow_loss``, ``flow_validation_loss``
    (with ``validation_fraction > 0``) and ``reflow_loss`` in the flow's panel, where reflow
    continues after the flow's last step (a dotted line marks its start: its loss is on
    fixed pairs, so it starts lower). Every curve present is drawn; a panel without curves is
    left out. The y axis is logarithmic when every loss of a panel is positive, so the slow
    late decrease stays visible next to the fast early one.

    Parameters
    ----------
    model
        A trained :class:`~cellflow.CellFlow`, or its ``history`` (a mapping). A curve is a
        list of losses (one per epoch or step) or of ``[epoch or step, loss]`` pairs.
    smooth
        Draw the flow's curves (per step) as running means of this many consecutive losses
        (1: as recorded). Per-step losses scatter with the minibatch; a window of a few dozen
        steps shows the trend. The VAE's per-epoch losses, already means over an epoch, and
        curves shorter than the window are drawn as recorded.
    ax
        Axes to draw on, one per panel drawn (a single Axes when only one panel has curves);
        default a new figure.
    show
        Show the figure (``None``: ``scanpy.settings.autoshow``); a shown figure returns nothing.
    save
        Write the figure: a file path (its extension sets the format; ``.png`` when it has
        none), or ``True`` for ``scanpy.settings.figdir / "training.<format>"``.

    Returns
    -------
    The Figure, unless it was shown: one line per curve, labelled as in the legend.

    Raises
    ------
    ValueError
        A history without any loss curve (a model trained by a version of cellflow that kept
        only final losses), a curve that is not a list of numbers or of pairs, or ``ax``
        with another number of Axes than panels.

    Examples
    --------
    >>> model.train()  # doctest: +SKIP
    >>> cf.pl.training(model)  # doctest: +SKIP
    """
    check_flags(show, save)
    if isinstance(smooth, bool) or not isinstance(smooth, int | np.integer) or smooth < 1:
        raise ValueError(f"smooth must be an int >= 1 (1: no smoothing), got {smooth!r}.")
    history = _history(model)
    panels = {
        title: [
            (label, _smoothed(*_curve(history[key], key), smooth if title == "flow" else 1))
            for key, label in curves
            if history.get(key) is not None
        ]
        for title, curves in CURVES.items()
    }
    panels = {title: curves for title, curves in panels.items() if curves}
    if not panels:
        keys = [key for curves in CURVES.values() for key, _ in curves]
        raise ValueError(
            f"The training history has no loss curve (looked for {keys}; it holds {sorted(history)}). Models "
            "trained before cellflow recorded curves keep only final losses; train again to plot them."
        )
    axes, own = _axes(ax, len(panels))
    for axis, (title, curves) in zip(axes, panels.items()):
        flow_end = 0.0
        for label, (x, y) in curves:
            if label == "reflow":
                x = x + flow_end
                if flow_end:
                    axis.axvline(flow_end, color="grey", lw=0.8, ls=":")
            elif label == "flow":
                flow_end = float(x[-1])
            axis.plot(x, y, lw=1.0, label=label)
        if all((y > 0).all() for _, (_, y) in curves):
            axis.set_yscale("log")
        axis.set_xlabel(X_LABELS[title])
        axis.set_ylabel("loss")
        axis.set_title(title)
        axis.legend(frameon=False, fontsize=8)
    figure = axes[0].figure
    return finish(figure, figure, name="training", show=show, save=save, own=own)


def _history(model) -> Mapping:
    if isinstance(model, Mapping):
        return model
    history = getattr(model, "history", None)
    if not isinstance(history, Mapping):
        raise TypeError(f"model must be a cf.CellFlow or its history (a mapping), got {type(model).__name__}.")
    return history


def _curve(values, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, loss)`` of a curve given as losses (x counted from 1) or as ``[x, loss]`` pairs."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"history[{key!r}] must be a list of losses or of [step, loss] pairs.") from None
    if array.ndim == 1 and array.size:
        return np.arange(1, array.size + 1, dtype=float), array
    if array.ndim == 2 and array.shape[1] == 2 and array.shape[0]:
        return array[:, 0], array[:, 1]
    raise ValueError(
        f"history[{key!r}] must be a non-empty list of losses or of [step, loss] pairs, got shape {array.shape}."
    )


def _smoothed(x: np.ndarray, y: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Running mean over ``window`` consecutive points, placed at the window's last x."""
    if window == 1 or len(y) < window:
        return x, y
    kernel = np.ones(window) / window
    return x[window - 1 :], np.convolve(y, kernel, mode="valid")


def _axes(ax, n: int) -> tuple[list, bool]:
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    if ax is None:
        _, axes = plt.subplots(1, n, figsize=(3.8 * n, 3.2), squeeze=False)
        return list(axes[0]), True
    axes = [ax] if isinstance(ax, Axes) else list(np.ravel(ax)) if isinstance(ax, Sequence | np.ndarray) else None
    if axes is None or not all(isinstance(a, Axes) for a in axes):
        raise TypeError(f"ax must be a matplotlib Axes or a list of them, got {type(ax).__name__}.")
    if len(axes) != n:
        raise ValueError(f"ax has {len(axes)} Axes for {n} panel(s) with loss curves; pass {n}.")
    return axes, False
