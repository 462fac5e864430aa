"""Markdown report and plots of a benchmark run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..metrics import VCC_METRICS, vcc_score

#: Scored metrics and whether higher is better.
HIGHER_IS_BETTER = {
    "pearson_delta": True,
    "pearson_delta_top20": True,
    "r2": True,
    "energy_distance": False,
    "mse_top20": False,
    "overlap_at_N": True,
    "discrimination_score_l1": True,
    "mae": False,
}
#: The method whose means the Virtual Cell Challenge score is relative to: the average
#: perturbation, the benchmark's counterpart of the challenge's cell-mean baseline.
VCC_REFERENCE = "cell_mean"
METHOD_ORDER = [
    "cellflow",
    "latent_arithmetic",
    "linear",
    "additive",
    "training_mean",
    "cell_mean",
    "control",
    "noise_floor",
]


def _order(methods) -> list[str]:
    methods = list(dict.fromkeys(methods))
    return [m for m in METHOD_ORDER if m in methods] + [m for m in methods if m not in METHOD_ORDER]


def _markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A pipe table (no dependency on ``tabulate``)."""
    table = table.reset_index()
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"

    def cell(value) -> str:
        if isinstance(value, float | np.floating):
            return "" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *lines])


def with_vcc_score(means: pd.DataFrame, reference: str = VCC_REFERENCE) -> pd.DataFrame:
    """``means`` (methods x metrics) with a ``vcc_score`` column against ``reference``'s row, when both are there.

    The score is :func:`cellflow.metrics.vcc_score` of each method's means of
    ``overlap_at_N``, ``discrimination_score_l1`` and ``mae``; the reference itself scores 0.
    Without the reference method or these metrics the table is returned unchanged.
    """
    if reference not in means.index or not all(m in means.columns for m in VCC_METRICS):
        return means
    base = means.loc[reference, list(VCC_METRICS)]
    if base.isna().any():
        return means
    scores = {
        method: vcc_score(row, base)["avg_score"] if row.notna().all() else np.nan
        for method, row in means[list(VCC_METRICS)].iterrows()
    }
    return means.assign(vcc_score=pd.Series(scores))


def losses(results: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """Plain sentences: every baseline and metric where cellflow's mean is worse than the baseline's."""
    sentences = []
    scored = results.dropna(subset=[m for m in metrics if m in results.columns], how="all")
    baselines = [m for m in _order(scored["method"]) if m not in ("cellflow", "noise_floor")]
    ids = ["condition", *[c for c in results.columns if c not in HIGHER_IS_BETTER and c not in _NON_IDS]]
    for metric in metrics:
        if metric not in scored.columns:
            continue
        wide = scored.pivot_table(index=ids, columns="method", values=metric, aggfunc="mean", dropna=False)
        if "cellflow" not in wide.columns:
            continue
        higher = HIGHER_IS_BETTER[metric]
        for baseline in baselines:
            if baseline not in wide.columns:
                continue
            both = wide[["cellflow", baseline]].dropna()
            if both.empty:
                continue
            ours, theirs = both["cellflow"].mean(), both[baseline].mean()
            worse = (both["cellflow"] < both[baseline]) if higher else (both["cellflow"] > both[baseline])
            if (ours < theirs) if higher else (ours > theirs):
                sentences.append(
                    f"cellflow loses to {baseline} on {metric} ({'higher' if higher else 'lower'} is better): "
                    f"mean {ours:.3f} vs {theirs:.3f}, worse on {int(worse.sum())} of {len(both)} held-out conditions."
                )
    return sentences


_NON_IDS = {"method", "n_cells", "note", "kind", "condition"}


def write_report(
    results: pd.DataFrame,
    changes: list[dict],
    out: str | Path,
    *,
    description: Mapping[str, object],
    times: Mapping[str, float],
    keys: Sequence[str] = (),
) -> Path:
    """Write ``report.md``, ``per_condition_<metric>.png`` and ``changes.png`` to ``out``; return the report path."""
    out = Path(out)
    metrics = [m for m in HIGHER_IS_BETTER if m in results.columns]
    order = _order(results["method"])
    means = with_vcc_score(results.groupby("method")[metrics].mean().reindex(order))
    lines = ["# cellflow benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in description.items()]
    higher = ", ".join(m for m, up in HIGHER_IS_BETTER.items() if up)
    lower = ", ".join(m for m, up in HIGHER_IS_BETTER.items() if not up)
    lines += ["", f"Higher is better for {higher} and vcc_score; lower for {lower}."]
    lines += ["noise_floor: half of the real cells predicting the other half. overlap_at_N (differential"]
    lines += ["expression score), discrimination_score_l1 (among the held-out conditions of a context) and mae"]
    lines += ["are the Virtual Cell Challenge's metrics as cell-eval computes them; vcc_score combines their"]
    lines += [f"means as the challenge does, relative to {VCC_REFERENCE} (0: no better on any; 1: perfect).", ""]
    lines += ["## Mean over held-out conditions", "", _markdown(means), ""]
    if "kind" in results.columns and results["kind"].nunique() > 1:
        for kind, part in results.groupby("kind"):
            table = with_vcc_score(part.groupby("method")[metrics].mean().reindex(_order(part["method"])))
            lines += [f"### {kind}", "", _markdown(table), ""]
    lines += ["## Where cellflow loses to a baseline", ""]
    ours = results[results["method"] == "cellflow"]
    if ours.empty or ours[metrics].isna().all(axis=None):
        lines += ["- No comparison: cellflow could not predict any held-out condition (see below)."]
    else:
        sentences = losses(results, metrics)
        lines += [f"- {s}" for s in sentences] or ["- Nowhere: cellflow's mean is at least as good on every metric."]
        unpredicted = int(ours[metrics].isna().all(axis=1).sum())
        if unpredicted:
            lines += [f"- cellflow could not predict {unpredicted} held-out condition(s); these are not compared."]
    if "note" in results.columns and results["note"].notna().any():
        lines += ["", "## Conditions a method could not predict", ""]
        for row in results[results["note"].notna()].itertuples():
            lines.append(f"- {row.method}, {row.condition}: {row.note}")
    ids = ["condition", *keys]
    for metric in ("pearson_delta", "energy_distance"):
        if metric in results.columns:
            wide = results.pivot_table(index=ids, columns="method", values=metric, aggfunc="mean")
            wide = wide[[m for m in order if m in wide.columns]]
            lines += ["", f"## Per condition: {metric}", "", _markdown(wide)]
    lines += ["", "## Time taken", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {step} | {seconds:.1f} |" for step, seconds in times.items()]
    lines += ["", "Plots: " + ", ".join(_plots(results, changes, out, metrics, ids))]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _plots(results, changes, out: Path, metrics, ids) -> list[str]:
    # Figures without pyplot: no global backend switch (a notebook keeps showing its plots) and
    # nothing left open.
    from matplotlib.figure import Figure

    written = []
    order = _order(results["method"])
    for metric in ("pearson_delta", "energy_distance"):
        if metric not in metrics:
            continue
        wide = results.pivot_table(index=ids, columns="method", values=metric, aggfunc="mean")
        names = [" ".join(str(v) for v in (i if isinstance(i, tuple) else (i,))) for i in wide.index]
        fig = Figure(figsize=(max(5, 0.6 * len(names) + 2), 4))
        ax = fig.subplots()
        for j, method in enumerate(m for m in order if m in wide.columns):
            ax.plot(range(len(names)), wide[method], "o", label=method, ms=6, alpha=0.8, color=f"C{j}")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per held-out condition")
        ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
        fig.tight_layout()
        name = f"per_condition_{metric}.png"
        fig.savefig(out / name, dpi=110)
        written.append(name)
    methods = [m for m in order if any(c["method"] == m for c in changes)]
    if methods:
        fig = Figure(figsize=(3 * len(methods), 3.2))
        axes = fig.subplots(1, len(methods), squeeze=False)
        for ax, method in zip(axes[0], methods):
            true = np.concatenate([c["true"] for c in changes if c["method"] == method])
            pred = np.concatenate([c["pred"] for c in changes if c["method"] == method])
            ax.scatter(true, pred, s=3, alpha=0.4)
            bound = float(max(np.abs(true).max(), np.abs(pred).max(), 1e-6))
            ax.plot([-bound, bound], [-bound, bound], lw=0.8, color="grey")
            ax.set_title(method, fontsize=9)
            ax.set_xlabel("observed change")
        axes[0][0].set_ylabel("predicted change")
        fig.suptitle("Mean log-expression change from control, per gene and held-out condition", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "changes.png", dpi=110)
        written.append("changes.png")
    return written
