"""Write predictions and real cells as the ``.h5ad`` files that cell-eval (the Virtual Cell Challenge) scores."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from ..metrics import log_normalize

if TYPE_CHECKING:
    from anndata import AnnData

#: Defaults of ``cell-eval run`` (``--pert-col``, ``--control-pert``) and the cell-type column of
#: ``cell-eval prep``: files written with them need no options.
PERT_COL = "target_gene"
CONTROL_LABEL = "non-targeting"
CELLTYPE_COL = "celltype"
_LOG1P_MAX = 15.0  # cell-eval refuses log-normalised values at or above this (``guess_is_lognorm``)


def export_cell_eval(
    pred: AnnData | Mapping[str, AnnData],
    real: AnnData,
    out_dir: str | Path,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    celltype_key: str | None = None,
    counts: bool = True,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write predicted and real cells in the format ``cell-eval run`` and ``cell_eval.MetricsEvaluator`` read.

    Then ``cell-eval run -ap pred.h5ad -ar real.h5ad --profile vcc`` (add ``--celltype-col
    celltype`` with ``celltype_key``) scores the prediction with the Virtual Cell Challenge's
    metrics, which :func:`cellflow.metrics.differential_expression_score`,
    :func:`cellflow.metrics.discrimination_score` and :func:`cellflow.metrics.mae_mean`
    reproduce.

    Parameters
    ----------
    pred
        Predicted cells with their perturbation in ``obs[perturbation_key]`` (e.g. the
        output of :func:`cellflow.tl.generate`), or several predictions by name (one file
        each, e.g. a model and a baseline to score it against with ``cell-eval score``).
    real
        Real cells: every perturbation predicted and the control cells. Only the
        perturbations of the predictions (in their cell types) and the control cells are
        written.
    out_dir
        Folder to write to (created if missing).
    perturbation_key
        Column of ``obs`` with the perturbation label in both objects.
    control
        Label of the control cells in ``real`` (and in ``pred``, if it has any).
    celltype_key
        Column of ``obs`` with the cell type (or another context) in both objects; written as
        ``celltype`` so that cell-eval scores each cell type on its own.
    counts
        ``True``: ``X`` holds counts, log-normalised here (``log1p`` of counts scaled to
        10,000 per cell over the genes written, :func:`cellflow.metrics.log_normalize`, as
        ``cellflow benchmark`` scores them). ``False``: ``X`` is log-normalised already and
        written as it is.
    overwrite
        Replace files already in ``out_dir``.

    Returns
    -------
    dict
        Paths written: ``"real"`` (``real.h5ad``) and, per prediction, ``"pred"``
        (``pred.h5ad``) or its name (``pred_<name>.h5ad``).

    Notes
    -----
    The files follow ``cell-eval prep``: ``X`` is float32 CSR of log-normalised expression,
    ``obs`` holds ``target_gene`` (the perturbation; the control cells labelled
    ``non-targeting``, cell-eval's default) and, with ``celltype_key``, ``celltype``; ``var``
    holds the genes of ``real`` in its order, the same in every file. cell-eval
    log-normalises integer input itself, to the median total count of each file separately,
    which would give the prediction and the real cells different scales; written
    log-normalised, the files are scored as they are. cell-eval tests the predicted cells for
    differential expression against the control cells of the prediction file, so a
    prediction without control cells gets the real control cells of its cell types (as
    Virtual Cell Challenge submissions carry them). The inputs are not modified.
    """
    import anndata as ad

    predictions = {"pred": pred} if isinstance(pred, ad.AnnData) else {f"pred_{name}": p for name, p in pred.items()}
    if not predictions:
        raise ValueError("`pred` is an empty mapping; pass at least one prediction.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; out_dir must be a folder.")
    paths = {"real": out / "real.h5ad", **{name: out / f"{name}.h5ad" for name in predictions}}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist; pass overwrite=True to replace them.")

    genes = real.var_names
    real_frame = _frame(real, "real", perturbation_key, celltype_key, control)
    real_pairs = set(zip(real_frame[PERT_COL], real_frame[CELLTYPE_COL]))
    frames = {name: _frame(adata, name, perturbation_key, celltype_key, control) for name, adata in predictions.items()}
    predicted = {name: set(zip(f[PERT_COL], f[CELLTYPE_COL])) - _control_pairs(f) for name, f in frames.items()}
    wanted = set().union(*predicted.values())
    for name, adata in predictions.items():
        missing = genes.difference(adata.var_names)
        if len(missing):
            raise ValueError(
                f"{name} lacks {len(missing)} gene(s) of `real` (e.g. {list(missing[:3])}); "
                "subset `real` to the predicted genes: real[:, pred.var_names]."
            )
        unknown = sorted(predicted[name] - real_pairs)
        if unknown:
            raise ValueError(f"{name} predicts perturbations `real` does not have (label, cell type): {unknown[:5]}.")
        lacking = sorted(wanted - predicted[name])
        if lacking:
            raise ValueError(
                f"{name} lacks {lacking[:5]} (label, cell type), predicted in another file; cell-eval compares "
                "every prediction with the same real cells, so every prediction needs the same perturbations."
            )
    celltypes = {celltype for _, celltype in wanted}
    controls = _control_pairs(real_frame)
    for celltype in sorted(celltypes - {c for _, c in controls}):
        where = f" of cell type {celltype!r}" if celltype_key else ""
        raise ValueError(f"`real` has no control cells ({control!r}){where}; cell-eval needs them.")
    pairs = list(zip(real_frame[PERT_COL], real_frame[CELLTYPE_COL]))
    keep = np.flatnonzero([pair in wanted or (pair in controls and pair[1] in celltypes) for pair in pairs])
    real_x = _expression(real[keep], genes, counts, "real")
    real_part = real_frame.iloc[keep].reset_index(drop=True)
    real_controls = real_part[PERT_COL].to_numpy() == CONTROL_LABEL

    tables = {"real": (real_x, real_part)}
    for name, adata in predictions.items():  # every matrix checked before anything is written
        frame = frames[name]
        own = frame[CELLTYPE_COL].isin(celltypes).to_numpy()  # drops control cells of cell types not predicted
        x, frame = _expression(adata[own], genes, counts, name), frame[own].reset_index(drop=True)
        lacking = celltypes - {c for _, c in _control_pairs(frame)}  # cell types without control cells
        rows = real_controls & real_part[CELLTYPE_COL].isin(lacking).to_numpy()
        if rows.any():
            x, frame = _stack(x, real_x[rows]), pd.concat([frame, real_part[rows]], ignore_index=True)
        tables[name] = (x, frame)
    out.mkdir(parents=True, exist_ok=True)
    for name, (x, frame) in tables.items():
        _write(x, frame, genes, paths[name], celltype_key is not None)
    return paths


def _control_pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    """(control label, cell type) of the cell types in which ``frame`` has control cells."""
    return {(CONTROL_LABEL, c) for c in frame.loc[frame[PERT_COL] == CONTROL_LABEL, CELLTYPE_COL]}


def _frame(adata: AnnData, name: str, perturbation_key: str, celltype_key: str | None, control: str) -> pd.DataFrame:
    """``target_gene`` (control relabelled ``non-targeting``) and ``celltype`` ("" without a key) of every cell."""
    for key in (perturbation_key, celltype_key):
        if key is not None and key not in adata.obs.columns:
            raise KeyError(f"{name} has no obs column {key!r}; obs columns: {list(adata.obs.columns)}.")
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    if control != CONTROL_LABEL and (labels == CONTROL_LABEL).any():
        raise ValueError(
            f"{name} has a perturbation labelled {CONTROL_LABEL!r}, the label cell-eval gives the control cells "
            f"({control!r}); rename it."
        )
    celltype = adata.obs[celltype_key].astype(str).to_numpy() if celltype_key else np.full(adata.n_obs, "")
    return pd.DataFrame({PERT_COL: np.where(labels == control, CONTROL_LABEL, labels), CELLTYPE_COL: celltype})


def _expression(adata: AnnData, genes: pd.Index, counts: bool, name: str):
    """Log-normalised float32 CSR of ``adata`` over ``genes``, checked to be what cell-eval takes as such."""
    matrix = adata[:, genes].X
    if counts:
        matrix = log_normalize(matrix)
    matrix = sparse.csr_matrix(matrix, dtype=np.float32)
    values = matrix.data
    if values.size and values.min() < 0:
        raise ValueError(f"{name} has negative values; cell-eval takes log-normalised expression (>= 0).")
    hint = "" if counts else " (pass counts=True if X holds counts)"
    if values.size and values.max() >= _LOG1P_MAX:
        raise ValueError(f"{name} has values >= {_LOG1P_MAX:g}, too large for log-normalised expression{hint}.")
    if not (np.modf(values)[0] > 1e-3).any():
        raise ValueError(
            f"{name} holds only whole numbers, which cell-eval would take for counts and normalise again{hint}."
        )
    return matrix


def _stack(x, extra):
    return sparse.vstack([x, extra], format="csr") if extra.shape[0] else x


def _write(x, frame: pd.DataFrame, genes: pd.Index, path: Path, with_celltype: bool) -> None:
    """Write one AnnData to ``path`` through a temporary file, so an interrupted export leaves no partial file."""
    import anndata as ad

    obs = frame[[PERT_COL, CELLTYPE_COL] if with_celltype else [PERT_COL]].copy()
    obs.index = pd.Index(np.arange(len(obs)).astype(str))
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(np.asarray(genes).astype(str))))
    partial = path.with_name(f".{path.name}.partial")
    try:
        adata.write_h5ad(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
