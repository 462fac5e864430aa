"""Axes to draw on, and scanpy's ``show`` / ``save`` at the end of every plot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Axes, bool]:
    """The caller's ``ax``, or the axes of a new figure; and whether the figure is ours."""
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
        return ax, True
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes (or None for a new figure), got {type(ax).__name__}.")
    return ax, False


def check_flags(show, save) -> None:
    """Refuse a ``show`` or ``save`` that is neither of scanpy's kinds, before any work is done."""
    if show is not None and not isinstance(show, bool):
        raise TypeError(f"show must be True, False or None (scanpy's autoshow), got {show!r}.")
    if save is not None and not isinstance(save, bool | str | Path):
        raise TypeError(f"save must be a file path, True (scanpy's figdir) or None, got {type(save).__name__}.")
    if isinstance(save, str) and not save:
        raise ValueError("save='' is not a file path; give one such as 'embedding.png', or save=True.")


def finish(figure: Figure, result, *, name: str, show: bool | None, save, own: bool):
    """Save and show the figure as scanpy does; return ``result`` unless the figure was shown.

    Parameters
    ----------
    figure
        The figure drawn on.
    result
        What the plot returns when it is not shown (its Axes, or the Figure of several panels).
    name
        File name (without extension) used by ``save=True``.
    show
        ``None`` follows ``scanpy.settings.autoshow``.
    save
        A path (written there; its extension sets the format, ``.png`` when it has none), ``True``
        (``scanpy.settings.figdir / <name>.<scanpy.settings.file_format_figs>``) or ``None``/``False``.
    own
        Whether the figure was made by the plot (then it is laid out, and closed after saving).
    """
    import matplotlib.pyplot as plt

    if show is None:
        import scanpy as sc

        show = bool(sc.settings.autoshow)
    if own:
        figure.tight_layout()
    if save:
        path = _save_path(save, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, bbox_inches="tight")
    if show:
        plt.show()
        return None
    if save and own:
        plt.close(figure)  # as scanpy: a saved figure is not left open (the returned artists stay readable)
    return result


def _save_path(save, name: str) -> Path:
    if save is True:
        import scanpy as sc

        return Path(sc.settings.figdir) / f"{name}{sc.settings.plot_suffix}.{sc.settings.file_format_figs}"
    path = Path(save)
    return path if path.suffix else path.with_suffix(".png")
