"""``cellflow benchmark``: train on a split of a real screen, predict the held-out conditions, score every method."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

import cellflow as cf

from ..metrics import log_normalize
from ..tl import generate
from ._baselines import AdditiveBaseline, CellMeanBaseline, ControlBaseline, TrainingMeanBaseline, conditions_frame
from ._export import export_cell_eval
from ._latent import LatentArithmeticBaseline
from ._linear import LinearBaseline
from ._report import write_report
from ._scoring import ConditionScorer
from ._splits import Split, split_combinations_by_seen, split_covariate_transfer, split_singles

if TYPE_CHECKING:
    from anndata import AnnData

SPLITS = ("combinations", "singles", "covariate_transfer")


def run_benchmark(
    data: str | Path | AnnData,
    *,
    split: str = "combinations",
    out: str | Path,
    perturbation_key: str = "perturbation",
    control: str = "control",
    covariate_keys: Sequence[str] = (),
    subset: tuple[str, str] | None = None,
    n_held_out: int | None = None,
    flow_steps: int | None = None,
    vae_epochs: int | None = None,
    latent_dim: int | None = None,
    token_embedding: str | None = None,
    seed: int = 0,
    accelerator: str = "auto",
    progress: bool = True,
    progress_bar: bool | None = None,
    export_cell_eval: str | Path | None = None,
) -> pd.DataFrame:
    """Hold out conditions, train CellFlow and the baselines, predict, score, and write a report.

    Parameters
    ----------
    data
        An ``.h5ad`` file of raw counts (or an AnnData).
    split
        ``"combinations"`` (up to ``n_held_out`` combinations with both, one and neither
        single measured), ``"singles"`` (``n_held_out`` single perturbations and, out of
        training, their combinations) or ``"covariate_transfer"`` (``n_held_out``
        perturbations held out in one value of the first covariate, seen in the others).
    out
        Directory for ``results.csv``, ``report.md`` and the plots.
    perturbation_key, control, covariate_keys
        As in :func:`cellflow.pp.setup`.
    subset
        ``(column, value)``: keep only cells with ``obs[column] == value``.
    n_held_out
        See ``split`` (defaults: 2 per kind, 3 singles, 3 perturbations).
    flow_steps, vae_epochs, latent_dim, token_embedding, seed, accelerator
        Model and training options (:class:`cellflow.CellFlow`); ``None`` keeps its default.
    progress
        Print a line at each step.
    progress_bar
        Show training progress bars (default: as ``progress``).
    export_cell_eval
        Folder to also write the held-out real cells and every method's predictions to, as
        ``.h5ad`` files that ``cell-eval run`` scores (:func:`~cellflow.evaluation.export_cell_eval`:
        ``real.h5ad``, ``pred_<method>.h5ad``, log-normalised, with a ``celltype`` column when
        there are covariates). A method that could not predict every held-out condition is
        not written. Files already there are replaced.

    Returns
    -------
    One row per method, held-out condition and context: the metrics of
    :class:`~cellflow.evaluation._scoring.ConditionScorer`, ``discrimination_score_l1``
    (cell-eval's perturbation discrimination score among the held-out conditions of the
    context, :meth:`~cellflow.evaluation.ConditionScorer.discrimination`) and ``note`` (why a
    method could not predict a condition). Methods: ``cellflow``, every baseline,
    ``noise_floor``. The report adds each method's Virtual Cell Challenge score against
    ``cell_mean``, the challenge's own baseline (:func:`cellflow.metrics.vcc_score`).
    """
    import anndata as ad

    say = print if progress else (lambda *a, **k: None)
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}.")
    if export_cell_eval is not None and Path(export_cell_eval).is_file():
        raise FileExistsError(f"export_cell_eval={str(export_cell_eval)!r} is a file; pass a folder.")
    keys = list(covariate_keys)
    if split == "covariate_transfer" and not keys:
        raise ValueError("split='covariate_transfer' needs covariate_keys (e.g. ['cell_type']).")
    times: dict[str, float] = {}
    start = time.perf_counter()
    adata = ad.read_h5ad(data) if isinstance(data, str | Path) else data
    if subset is not None:
        column, value = subset
        if column not in adata.obs.columns:
            raise KeyError(f"subset column {column!r} is not in obs; columns: {list(adata.obs.columns)}.")
        adata = adata[adata.obs[column].astype(str) == str(value)].copy()
        if adata.n_obs == 0:
            raise ValueError(f"No cell has obs[{column!r}] == {value!r}.")
    setup = {"perturbation_key": perturbation_key, "control": control, "covariate_keys": keys}
    cf.pp.setup(adata, **setup)
    frame = conditions_frame(adata)
    chosen = _split(frame, split, keys, n_held_out, seed, control)
    if not chosen.held_out:
        raise ValueError(f"The {split!r} split found nothing to hold out in this data.")
    say(f"[1/5] {adata.n_obs} cells x {adata.n_vars} genes; held out ({split}):")
    for condition, kind in chosen.kind.items():
        say(f"      {condition}: {kind}")
    train = adata[chosen.train_mask].copy()
    cf.pp.setup(train, **setup)

    say(f"[2/5] Training CellFlow on {train.n_obs} cells")
    tic = time.perf_counter()
    architecture = {"latent_dim": latent_dim, "token_embedding": token_embedding}
    model = cf.CellFlow(train, seed=seed, **{k: v for k, v in architecture.items() if v is not None})
    model.train(
        flow_steps=flow_steps,
        vae_epochs=vae_epochs,
        progress_bar=progress if progress_bar is None else progress_bar,
        accelerator=accelerator,
    )
    times["train cellflow (VAE, flow, reflow if any)"] = time.perf_counter() - tic
    history = model.history
    say(
        f"      VAE {history['vae_seconds']:.1f} s, flow {history['flow_seconds']:.1f} s, "
        f"reflow {history.get('reflow_seconds', 0.0):.1f} s"
    )

    say("[3/5] Fitting the baselines")
    baselines = []
    baselines_to_fit = (
        ControlBaseline(),
        AdditiveBaseline(),
        TrainingMeanBaseline(),
        CellMeanBaseline(),
        LinearBaseline(),
    )
    for baseline in (*baselines_to_fit, LatentArithmeticBaseline(model)):
        tic = time.perf_counter()
        baselines.append(baseline.fit(train))
        times[f"fit {baseline.name}"] = time.perf_counter() - tic

    say("[4/5] Predicting and scoring the held-out conditions")
    tic = time.perf_counter()
    results, changes, cells = _score(adata, frame, chosen, model, baselines, keys, control, seed, say)
    times["predict and score"] = time.perf_counter() - tic
    results["kind"] = results["condition"].map(chosen.kind)

    say("[5/5] Writing results.csv, report.md and plots")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / "results.csv", index=False)
    exported = None
    if export_cell_eval is not None:  # after results.csv, so that a failed export loses no scores
        tic = time.perf_counter()
        exported = _export(cells, adata.var_names, keys, control, export_cell_eval)
        times["export for cell-eval"] = time.perf_counter() - tic
        written = ", ".join(p.name for p in exported.values()) or "nothing (no method predicted every condition)"
        say(f"      wrote {written} to {export_cell_eval} for cell-eval")
    times["total"] = time.perf_counter() - start
    description = {
        "data": str(data) if isinstance(data, str | Path) else "AnnData",
        "subset": f"{subset[0]}={subset[1]}" if subset else "all cells",
        "split": split,
        "cells": f"{adata.n_obs} ({train.n_obs} in training)",
        "genes": adata.n_vars,
        "flow steps": model.flow_config.steps,
        "seed": seed,
    }
    if exported is not None:
        description["cell-eval files"] = _cell_eval_command(exported, keys)
    write_report(results, changes, out, description=description, times=times, keys=keys)
    say(f"      wrote {out / 'results.csv'} and {out / 'report.md'} in {times['total']:.0f} s")
    return results


def _split(frame, split, keys, n_held_out, seed, control) -> Split:
    if split == "combinations":
        return split_combinations_by_seen(frame, n_per_kind=n_held_out or 2, seed=seed, control=control)
    if split == "singles":
        return split_singles(frame, n_singles=n_held_out or 3, seed=seed, control=control)
    return split_covariate_transfer(frame, covariate_key=keys[0], n_perturbations=n_held_out or 3, seed=seed)


def _score(adata, frame, split, model, baselines, keys, control, seed, say):
    """Rows of scores, the mean change from control of every prediction (for the plots), and the cells scored."""
    real = log_normalize(adata.X)
    scorer = ConditionScorer(real, gene_names=adata.var_names)
    labels = frame["condition"].to_numpy()
    rows, changes, profiles = [], [], []
    cells = _Cells()
    for condition in split.held_out:
        in_condition = labels == condition
        if split.contexts and condition in split.contexts:
            contexts = split.contexts[condition]
        else:
            contexts = frame.loc[in_condition, keys].drop_duplicates().to_dict("records") if keys else [{}]
        for context in contexts:
            where = np.ones(len(frame), dtype=bool)
            for key, value in context.items():
                where &= frame[key].to_numpy() == value
            truth, controls = real[in_condition & where], real[(labels == control) & where]
            label = {"condition": condition, **{k: context.get(k) for k in keys}, "n_cells": len(truth)}
            context_key = tuple(str(context.get(k)) for k in keys)
            cells.real.append((truth, condition, context_key))
            cells.controls[context_key] = controls
            predictions: dict[str, np.ndarray | str] = {}
            try:
                pred = generate(model, conditions=[condition], n_cells=len(truth), covariates=context, seed=seed)
                predictions["cellflow"] = log_normalize(pred.X)
            except (ValueError, KeyError) as error:
                predictions["cellflow"] = str(error).splitlines()[0][:200]
            for baseline in baselines:
                try:
                    predictions[baseline.name] = baseline.predict(
                        condition, covariates=context, n_cells=len(truth), seed=seed
                    )
                except ValueError as error:
                    predictions[baseline.name] = str(error).splitlines()[0][:200]
            control_mean = controls.mean(axis=0)
            true_change = truth.mean(axis=0) - control_mean
            for method, pred in predictions.items():
                if isinstance(pred, str):  # the method cannot predict this condition
                    rows.append({"method": method, **label, "note": pred})
                    cells.predictions.setdefault(method, []).append(None)
                    continue
                rows.append({"method": method, **label, **scorer.score(pred, truth, controls)})
                pred_change = pred.mean(axis=0) - control_mean
                changes.append({"method": method, **label, "true": true_change, "pred": pred_change})
                profiles.append((len(rows) - 1, method, context_key, condition, pred_change, true_change))
                cells.predictions.setdefault(method, []).append((pred, condition, context_key))
            first, second = scorer.halves(truth, seed=seed)
            rows.append({"method": "noise_floor", **label, **scorer.score(first, second, controls)})
            noise_changes = (first.mean(axis=0) - control_mean, second.mean(axis=0) - control_mean)
            profiles.append((len(rows) - 1, "noise_floor", context_key, condition, *noise_changes))
            say(f"      scored {condition} {context or ''}")
    _discrimination(rows, profiles, scorer)
    return pd.DataFrame(rows), changes, cells


def _discrimination(rows: list[dict], profiles: list[tuple], scorer: ConditionScorer) -> None:
    """Add ``discrimination_score_l1`` to the rows: each method's conditions ranked among those of their context."""
    groups: dict[tuple, list[tuple]] = {}
    for row, method, context_key, condition, pred_change, true_change in profiles:
        groups.setdefault((method, context_key), []).append((row, condition, pred_change, true_change))
    for members in groups.values():
        if len(members) < 2:  # one condition has nothing to be told apart from
            continue
        row_ids, conditions, pred_changes, true_changes = zip(*members)
        scores = scorer.discrimination(conditions, np.stack(pred_changes), np.stack(true_changes))
        for row, value in zip(row_ids, scores):
            rows[row]["discrimination_score_l1"] = float(value)


class _Cells:
    """The cells scored, kept for the export: real cells and predictions per condition, control cells per context."""

    def __init__(self) -> None:
        self.real: list[tuple[np.ndarray, str, tuple]] = []
        self.controls: dict[tuple, np.ndarray] = {}
        self.predictions: dict[str, list[tuple[np.ndarray, str, tuple] | None]] = {}


def _export(cells: _Cells, genes, keys, control: str, folder) -> dict:
    """Write the held-out real cells and every complete prediction for cell-eval."""
    import anndata as ad

    def assemble(parts) -> ad.AnnData:
        obs = pd.DataFrame(
            {
                "perturbation": np.concatenate([[condition] * len(x) for x, condition, _ in parts]),
                "context": np.concatenate([["|".join(context)] * len(x) for x, _, context in parts]),
            }
        )
        obs.index = obs.index.astype(str)
        matrix = sparse.vstack([sparse.csr_matrix(x, dtype=np.float32) for x, _, _ in parts], format="csr")
        return ad.AnnData(matrix, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))

    controls = [(x, control, context) for context, x in cells.controls.items()]
    real = assemble(cells.real + controls)
    predictions = {
        method: assemble(parts) for method, parts in cells.predictions.items() if all(p is not None for p in parts)
    }
    if not predictions:  # cell-eval needs a prediction of every held-out condition
        return {}
    return export_cell_eval(
        predictions,
        real,
        folder,
        perturbation_key="perturbation",
        control=control,
        celltype_key="context" if keys else None,
        counts=False,
        overwrite=True,
    )


def _cell_eval_command(exported: dict, keys) -> str:
    """Where the files for cell-eval are and how to score one of them (a line of the report)."""
    if not exported:
        return "none written: no method predicted every held-out condition"
    real = exported["real"]
    pred = exported.get("pred_cellflow", next(p for name, p in exported.items() if name != "real"))
    celltype = " --celltype-col celltype" if keys else ""
    return f"`cell-eval run -ap {pred} -ar {real} --profile vcc{celltype}` (one pred_<method>.h5ad per method)"
