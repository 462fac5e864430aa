"""Train-free part of a benchmark: predict held-out conditions with every method and score them."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ..flow import ConditionBatch
from ..metrics import log_normalize
from ..pp._conditions import parse_condition
from ..tl import generate
from ._baselines import Baseline
from ._scoring import ConditionScorer

if TYPE_CHECKING:
    from anndata import AnnData

    from ..models._cellflow import CellFlow


def score_held_out(
    adata: AnnData,
    frame: pd.DataFrame,
    held_out: Sequence[str],
    *,
    model: CellFlow | None = None,
    baselines: Sequence[Baseline] = (),
    covariate_keys: Sequence[str] = (),
    control: str = "control",
    seed: int = 0,
    extra_metrics: Callable[[np.ndarray, str, dict], dict] | None = None,
    vae_ceiling: bool = True,
    n_cells: int | None = None,
    draws: int = 1,
    pca_reference=None,
    progress: bool = False,
) -> pd.DataFrame:
    """Predict each held-out condition in each context where it was measured, and score it.

    Parameters
    ----------
    adata
        All real cells (counts), including the held-out ones.
    frame
        Canonical condition and covariates of every cell (:func:`conditions_frame`).
    held_out
        Conditions to predict.
    model
        A trained :class:`~cellflow.CellFlow` (scored as ``"cellflow"``).
    baselines
        Fitted baselines.
    covariate_keys
        Covariates that define a context.
    control
        Control label.
    seed
        Seed of the first draw of every prediction (later draws: :func:`draw_seed`).
    extra_metrics
        ``f(pred_log_normalised, method, context) -> dict`` of further metrics (e.g. error
        against a simulator's ground truth).
    vae_ceiling
        With a model, also score ``vae_ceiling``: the real held-out cells passed through the
        model's VAE and decoded as generation decodes (a draw around each cell's posterior mean
        with its posterior sd, the cell's own library size, the condition's gene offsets, counts
        sampled: scvi-tools' posterior predictive), what a flow that generated the held-out
        cells' latents and library sizes exactly would reach, so this row tells errors of the
        flow from those of the VAE.
    n_cells
        Cells each method predicts per condition and context (default: as many as the real
        held-out cells). More cells estimate a method's predicted distribution more
        precisely: sampling noise then no longer lowers its Pearson delta or scatters its
        energy distance (whose estimate is unbiased at any size). The VAE ceiling and the
        noise floor always use the real cells.
    draws
        Independent draws of every prediction (and of the VAE row's latents and counts and the
        noise floor's halves), each scored on its own (column ``draw``; the first draw with
        ``seed`` itself, draw ``d`` with ``SeedSequence(seed, spawn_key=(d,))``). With few cells
        a condition one draw's distances scatter; the mean over draws keeps its expectation and
        loses most of that scatter, so what remains between seeds is training.
    pca_reference
        Counts (cells x genes, e.g. the training cells' ``X``) on whose log-normalised
        expression the principal components of the distances are fitted; default: all of
        ``adata``. The training cells give a basis the held-out cells never shaped.
    progress
        Print one line per condition.

    Returns
    -------
    One row per method, condition, context and draw: the metrics of
    :class:`~cellflow.evaluation._scoring.ConditionScorer`, ``n_cells``, ``draw`` and, for
    the model, ``generate_seconds``. The method ``noise_floor`` is half of the real cells
    predicting the other half.
    """
    if isinstance(draws, bool) or not isinstance(draws, int | np.integer) or draws < 1:
        raise ValueError(f"draws={draws!r} must be a positive integer (1: one draw of every prediction).")
    real = log_normalize(adata.X)
    scorer = ConditionScorer(real if pca_reference is None else log_normalize(pca_reference))
    keys = list(covariate_keys)
    rows = []
    for condition in held_out:
        in_condition = frame["condition"].to_numpy() == condition
        contexts = frame.loc[in_condition, keys].drop_duplicates().to_dict("records") if keys else [{}]
        for context in contexts:
            where = np.ones(len(frame), dtype=bool)
            for key, value in context.items():
                where &= frame[key].to_numpy() == value
            truth = real[in_condition & where]
            control_cells = real[(frame["condition"].to_numpy() == control) & where]
            label = {"condition": condition, **context, "n_cells": len(truth)}
            n_predicted = len(truth) if n_cells is None else n_cells
            # The VAE ceiling passes the real held-out cells' counts through the model's VAE.
            ceiling = adata.X[in_condition & where] if vae_ceiling and model is not None else None
            for draw in range(draws):
                rows += _score_draw(
                    model,
                    baselines,
                    scorer,
                    truth=truth,
                    control_cells=control_cells,
                    ceiling_counts=ceiling,
                    condition=condition,
                    context=context,
                    label={**label, "draw": draw},
                    n_predicted=n_predicted,
                    seed=draw_seed(seed, draw),
                    extra_metrics=extra_metrics,
                )
            if progress:
                print(f"  scored {condition} {context}", flush=True)
    return pd.DataFrame(rows)


def draw_seed(seed: int, draw: int) -> int:
    """Seed of draw ``draw`` of a scoring run: ``seed`` itself for the first, derived from both for the others.

    Derived with numpy's ``SeedSequence`` under a spawn key, so no draw shares its seed with
    another draw, nor with a block of :func:`cellflow.tl.generate` (whose blocks' seeds come
    from the same ``seed`` without one).
    """
    if draw == 0:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(draw,)).generate_state(1, dtype=np.uint64)[0] >> 1)


def _score_draw(
    model: CellFlow | None,
    baselines: Sequence[Baseline],
    scorer: ConditionScorer,
    *,
    truth: np.ndarray,
    control_cells: np.ndarray,
    ceiling_counts,
    condition: str,
    context: dict,
    label: dict,
    n_predicted: int,
    seed: int,
    extra_metrics: Callable[[np.ndarray, str, dict], dict] | None,
) -> list[dict]:
    """Rows of one draw of one condition in one context: every method's prediction scored, and the noise floor.

    ``truth`` and ``control_cells`` are the real held-out and control cells of the context
    (log-normalised), ``ceiling_counts`` the held-out cells' counts for the VAE row (``None``: none).
    """
    predictions = {}
    if model is not None:
        start = time.perf_counter()
        pred = generate(model, conditions=[condition], n_cells=n_predicted, covariates=context, seed=seed)
        predictions["cellflow"] = (log_normalize(pred.X), time.perf_counter() - start)
        if ceiling_counts is not None and model.config.batch_key is None:  # batches of real cells are not tracked
            offset = _gene_offset(model, condition, context)
            predictions["vae_ceiling"] = (_reconstruct(model, ceiling_counts, seed, offset), None)
    for baseline in baselines:
        predictions[baseline.name] = (
            baseline.predict(condition, covariates=context, n_cells=n_predicted, seed=seed),
            None,
        )
    rows = []
    for method, (pred, seconds) in predictions.items():
        row = {"method": method, **label, "n_predicted": len(pred), **scorer.score(pred, truth, control_cells)}
        if seconds is not None:
            row["generate_seconds"] = seconds
        if extra_metrics is not None:
            row |= extra_metrics(pred, condition, context)
        rows.append(row)
    rows.append({"method": "noise_floor", **label, **scorer.noise_floor(truth, control_cells, seed=seed)})
    return rows


def score_reconstruction(
    model: CellFlow,
    adata: AnnData,
    frame: pd.DataFrame,
    *,
    covariate_keys: Sequence[str] = (),
    control: str = "control",
    seed: int = 0,
) -> pd.DataFrame:
    """How faithfully the model's VAE keeps each perturbation's effect: real cells through it, scored.

    Every perturbed condition of ``adata`` (in each context) is encoded and decoded as
    generation decodes (a draw around each posterior mean with its posterior sd, the cells' own
    library sizes, counts sampled), then scored against the same real cells like a prediction
    (:class:`~cellflow.evaluation.ConditionScorer`, control cells of the context as reference),
    next to the noise floor. It needs only the VAE (:meth:`~cellflow.CellFlow.train_vae`) and
    only training cells, so it can choose VAE settings (e.g. the KL weight) without looking at
    held-out conditions: a latent flow cannot predict an effect its VAE does not keep. The
    reconstruction is scored against the very cells it came from, so it can score better than
    the noise floor (two independent halves of the real cells); compare settings with each other.

    Parameters
    ----------
    model
        A :class:`~cellflow.CellFlow` whose VAE is trained (set up without ``batch_key``).
    adata
        Real cells (counts), e.g. the model's training cells.
    frame
        Canonical condition and covariates of every cell (:func:`conditions_frame`).
    covariate_keys
        Covariates that define a context.
    control
        Control label.
    seed
        Seed of the count sampling and of the noise floor's split.

    Returns
    -------
    One row per method (``vae_reconstruction``, ``noise_floor``), condition and context, with the
    scorer's metrics.
    """
    if model.config.batch_key is not None:
        raise ValueError(
            "score_reconstruction does not track batches of real cells yet; use a model set up without batch_key."
        )
    real = log_normalize(adata.X)
    scorer = ConditionScorer(real)
    keys = list(covariate_keys)
    condition = frame["condition"].to_numpy()
    rows = []
    for context in frame[keys].drop_duplicates().to_dict("records") if keys else [{}]:
        where = np.ones(len(frame), dtype=bool)
        for key, value in context.items():
            where &= frame[key].to_numpy() == value
        control_cells = real[(condition == control) & where]
        for label in sorted(set(condition[where]) - {control}):
            cells = (condition == label) & where
            truth = real[cells]
            info = {"condition": label, **context, "n_cells": int(cells.sum())}
            reconstructed = _reconstruct(model, adata.X[cells], seed)
            rows.append({"method": "vae_reconstruction", **info, **scorer.score(reconstructed, truth, control_cells)})
            rows.append({"method": "noise_floor", **info, **scorer.noise_floor(truth, control_cells, seed=seed)})
    return pd.DataFrame(rows)


def _reconstruct(model: CellFlow, counts, seed: int, gene_offset: torch.Tensor | None = None) -> np.ndarray:
    """Real cells through the model's VAE as generation decodes its cells, log-normalised.

    Each cell's posterior mean and sd and its own library size go to the decoder
    (:meth:`~cellflow.vae.LatentVAE.decode` with ``latent_scale``), which draws the latent
    around the mean and samples counts: scvi-tools' posterior predictive; ``gene_offset`` (a
    condition's, or ``None``) corrects the expected counts first, as generation does.
    """
    latent, scale, log_library = (torch.as_tensor(a, dtype=torch.float32) for a in model.vae.encode_posterior(counts))
    generator = torch.Generator().manual_seed(seed)
    decoded = model.vae.decode(
        latent, log_library.view(-1, 1), generator=generator, latent_scale=scale, gene_offset=gene_offset
    )
    return log_normalize(decoded.cpu().numpy())


def _gene_offset(model: CellFlow, condition: str, context: dict) -> torch.Tensor | None:
    """The model's gene offsets ``(1, G)`` for a condition in a context (``None``: none, or a backbone over time)."""
    module, setup, codec = model.module, model.setup, model.codec
    if module.gene_offsets is None or module.over_time:
        return None
    ids, doses, mask = codec.encode_conditions([parse_condition(condition, control=setup.control, sep=setup.combo_sep)])
    values = {k: str(context[k]) for k in codec.covariate_keys}
    code = module.reference.context_code(tuple(values.values()))
    covariates = codec.encode_covariates([values])
    return module.gene_offset(ConditionBatch(ids, doses, mask, covariates, torch.zeros(1), torch.tensor([code])))


def summary_table(results: pd.DataFrame, metrics: Sequence[str], by: Sequence[str] = ("method",)) -> pd.DataFrame:
    """Mean of ``metrics`` per method (and other ``by`` columns), methods in a fixed, readable order."""
    table = results.groupby(list(by))[list(metrics)].mean()
    order = ["cellflow", "vae_ceiling", "additive", "control", "perturbation_mean", "noise_floor"]
    if list(by) == ["method"]:
        table = table.reindex([m for m in order if m in table.index] + [m for m in table.index if m not in order])
    return table
