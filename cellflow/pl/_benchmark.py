"""``cf.pl.benchmark``: every method's metric per held-out condition, against the noise floor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._render import check_flags, finish, new_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes

NOISE_FLOOR = "noise_floor"
NOT_CONTEXT = {"method", "condition", "note", "kind", "draw"}
# Direction of metrics outside HIGHER_IS_BETTER, by name prefix (pearson_delta_top50, mse_top50, truth_rmse, ...).
_HIGHER_PREFIXES = ("pearson", "r2", "spearman", "top_de_overlap", "discrimination")
_LOWER_PREFIXES = ("mse", "mae", "rmse", "energy", "mmd", "wasserstein", "truth_rmse")


def benchmark(
    results: pd.DataFrame | str | Path,
    metric: str = "pearson_delta",
    *,
    methods: Sequence[str] | None = None,
    higher_is_better: bool | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | None:
    """Every method's score per held-out condition, with the noise floor as a band.

    Reads the table of :func:`cellflow.evaluation.run_benchmark` (``cellflow benchmark``
    writes it as ``results.csv``) or of :func:`cellflow.evaluation.score_held_out`: one row
    per method, held-out condition and context, the metrics as columns. Each held-out
    condition (in each context, e.g. cell type) gets one column of points, one colour per
    method; several rows of a method for one condition (several seeds, or the ``draws`` of
    :func:`~cellflow.evaluation.score_held_out`) give several points.
    The rows of the method ``noise_floor`` (half of the real cells predicting the other
    half) are drawn as a grey band per condition, from the noise floor's value (its mean
    over rows) to the better end of the axis: a method inside the band scores as well as a
    replicate of the real cells, so the gaps between methods there are sampling noise.

    Parameters
    ----------
    results
        The results table, or the path of ``results.csv``, or the folder that holds it
        (``cellflow benchmark --out``).
    metric
        Column to plot, e.g. ``"pearson_delta"``, ``"pearson_delta_top20"``,
        ``"energy_distance"``, ``"mse_top20"``, ``"r2"``.
    methods
        Methods to draw, in this order (default: every method with a score but the noise
        floor, in the report's order: cellflow first, then the baselines).
    higher_is_better
        Direction of ``metric``; needed only for metrics the benchmark does not define
        (which side of the noise floor the band covers).
    ax
        Axes to draw on; default a new figure.
    show
        Show the figure (``None``: ``scanpy.settings.autoshow``); a shown figure returns nothing.
    save
        Write the figure: a file path (its extension sets the format; ``.png`` when it has
        none), or ``True`` for ``scanpy.settings.figdir / "benchmark.<format>"``.

    Returns
    -------
    The Axes, unless the figure was shown: one scatter collection per method (labelled with
    the method) and the band, labelled ``"noise floor"``.

    Raises
    ------
    ValueError
        A table without ``method`` and ``condition`` columns or without ``metric``, an
        unknown method, no scores to draw, or a metric of unknown direction without
        ``higher_is_better``.
    FileNotFoundError
        A path that is neither ``results.csv`` nor a folder holding it.

    Examples
    --------
    >>> cf.pl.benchmark("results/", metric="energy_distance")  # doctest: +SKIP
    """
    from ..evaluation._report import _order  # the report's method order (importing evaluation loads torch)

    check_flags(show, save)
    table = _read(results)
    if not isinstance(metric, str) or metric not in table.columns:
        numeric = [c for c in table.columns if c not in NOT_CONTEXT and pd.api.types.is_numeric_dtype(table[c])]
        raise ValueError(f"metric={metric!r} is not a column of the results; numeric columns: {numeric}.")
    if not pd.api.types.is_numeric_dtype(table[metric]):
        raise ValueError(f"metric={metric!r} is not numeric (dtype {table[metric].dtype}); choose a score column.")
    higher = _direction(metric, higher_is_better)
    available = [m for m in _order(table["method"].astype(str)) if m != NOISE_FLOOR]
    if methods is None:  # every method with a score (one that could predict nothing has only a note)
        scored_methods = set(table.loc[table[metric].notna(), "method"].astype(str))
        methods = [m for m in available if m in scored_methods] or available
    else:
        methods = [methods] if isinstance(methods, str) else list(methods)
        unknown = [m for m in methods if m not in available]
        if unknown:
            raise ValueError(f"methods {unknown} are not in the results; it has {available}.")
    context = [c for c in table.columns if c not in NOT_CONTEXT and not pd.api.types.is_numeric_dtype(table[c])]
    keys = ["condition", *context]
    table = table.assign(_where=_names(table, keys))
    scored = table[table[metric].notna() & table["method"].isin([*methods, NOISE_FLOOR])]
    if scored.empty or scored["method"].isin(methods).sum() == 0:
        raise ValueError(f"No method in {methods} has a {metric!r} score in the results (every row is NaN).")
    names = list(dict.fromkeys(scored["_where"]))
    position = {name: i for i, name in enumerate(names)}

    ax, own = new_axes(ax, (max(4.5, 0.7 * len(names) + 2.5), 3.8))
    width = 0.7 / max(1, len(methods))
    for j, method in enumerate(methods):
        rows = scored[scored["method"] == method]
        x = rows["_where"].map(position).to_numpy(dtype=float) + (j - (len(methods) - 1) / 2) * width
        ax.scatter(x, rows[metric], s=28, color=f"C{j}", label=method, zorder=3, edgecolors="white", linewidths=0.5)
    floor = scored[scored["method"] == NOISE_FLOOR].groupby("_where", sort=False)[metric].mean()
    ax.set_xlim(-0.5, len(names) - 0.5)
    if not floor.empty:
        _band(ax, floor, position, higher)
    ax.set_xticks(
        range(len(names)), names, rotation=45 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center"
    )
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per held-out condition ({'higher' if higher else 'lower'} is better)", fontsize=10)
    ax.legend(frameon=False, fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return finish(ax.figure, ax, name="benchmark", show=show, save=save, own=own)


def _read(results) -> pd.DataFrame:
    if isinstance(results, str | Path):
        path = Path(results)
        if path.is_dir():
            path = path / "results.csv"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist; pass the results table, its results.csv, or the folder that "
                "`cellflow benchmark --out` wrote."
            )
        results = pd.read_csv(path)
    if not isinstance(results, pd.DataFrame):
        raise TypeError(f"results must be a DataFrame or the path of results.csv, got {type(results).__name__}.")
    missing = [c for c in ("method", "condition") if c not in results.columns]
    if missing:
        raise ValueError(
            f"results has no column(s) {missing}; pass the table of cf.evaluation.run_benchmark or score_held_out."
        )
    return results


def _direction(metric: str, given: bool | None) -> bool:
    if given is not None:
        if not isinstance(given, bool):
            raise TypeError(f"higher_is_better must be True, False or None, got {given!r}.")
        return given
    from ..evaluation._report import HIGHER_IS_BETTER

    if metric in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[metric]
    if metric.startswith(_HIGHER_PREFIXES):
        return True
    if metric.startswith(_LOWER_PREFIXES):
        return False
    raise ValueError(f"Whether a higher {metric!r} is better is not known; pass higher_is_better=True or False.")


def _names(table: pd.DataFrame, keys: list[str]) -> pd.Series:
    """``condition`` or ``condition (context)``: one name per held-out condition and context."""
    names = table["condition"].astype(str)
    extra = [k for k in keys[1:] if table[k].notna().any()]
    if extra:
        context = table[extra].astype(str).agg(", ".join, axis=1)
        names = names + " (" + context + ")"
    return names


def _band(ax, floor: pd.Series, position: dict[str, int], higher: bool) -> None:
    """Grey band from each condition's noise floor to the better end of the axis (the limits are kept)."""
    bottom, top = ax.get_ylim()
    values = np.array([floor.get(name, np.nan) for name in position])
    bottom, top = min(bottom, np.nanmin(values)), max(top, np.nanmax(values))
    pad = 0.05 * (top - bottom or 1.0)
    bottom, top = bottom - pad, top + pad
    edges = np.arange(len(values) + 1) - 0.5
    edge = np.append(values, values[-1])  # step="post": the last value runs to the right edge
    end = np.full_like(edge, top if higher else bottom)
    ax.fill_between(
        edges,
        edge,
        end,
        step="post",
        where=np.isfinite(edge),
        color="0.85",
        alpha=0.7,
        linewidth=0,
        zorder=1,
        label="noise floor",
    )
    ax.step(edges, edge, where="post", color="0.6", lw=0.8, zorder=1, label="_noise floor edge")
    ax.set_ylim(bottom, top)
