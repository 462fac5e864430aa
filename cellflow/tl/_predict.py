"""``cf.tl.predict``: what the user's own cells would look like under a perturbation (their counterfactual)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._constants import LATENT_KEY
from ..flow import ConditionBatch
from ..models._cellflow import CellFlow
from ._arguments import _check_finite, _check_guidance, _check_int, _check_model, _check_solver, _context, _parse
from ._encode import encode_cells

if TYPE_CHECKING:
    from anndata import AnnData

PREDICTED_KEY = "cellflow_perturbation"  # obs column of the output: the condition each cell was carried to


def predict(
    model: CellFlow,
    adata: AnnData,
    perturbation: str,
    *,
    dose: str | float | None = None,
    context: Mapping[str, str] | None = None,
    layer: str | None = None,
    seed: int = 0,
    method: str | None = None,
    steps: int | None = None,
    guidance: float = 1.0,
    sample_counts: bool = True,
) -> AnnData:
    """Predict each given cell under a perturbation: its counterfactual (scGen and CPA style).

    Every cell is encoded by the model's VAE, carried by the flow of the requested condition in
    the cell's own context (its covariate values) from where it is, moved by the condition's
    token shift, and decoded with the cell's own library size moved by the condition's library
    shift (and its VAE batch); counts are drawn around the carried latent with the cell's own
    posterior standard deviation and the condition's gene offsets, as
    :func:`~cellflow.tl.generate` does. The cells are taken to be unperturbed cells of their
    context, as the control cells the flow was trained from: pass control cells (or cells of a
    new donor, sample or cell line in a known context).

    Parameters
    ----------
    model
        A trained :class:`~cellflow.CellFlow` whose flow starts from control cells
        (``source="control"``) and takes time, if any, as part of the condition.
    adata
        The cells, with (at least) the model's genes, matched by name (order and extra genes do
        not matter), in the kind of expression the model was set up with (counts by default).
    perturbation
        The condition, e.g. ``"KLF1"`` or ``"KLF1+MAP2K6"`` (also combinations never measured).
    dose
        The dose (or dose string aligned with the tokens, ``"1+0.5"``); default: every token at 1.
    context
        Covariate values to predict every cell in, e.g. ``{"cell_type": "K562"}``. Default: each
        cell's own values from ``adata.obs[covariate_keys]``. Give it to borrow the flow of a known
        context for cells of a context the model never saw (a new cell type or donor); the
        prediction then assumes the perturbation acts there as in the borrowed context.
    layer
        Layer with the expression; default: the model's layer, else ``X``.
    seed
        Seed of the draws around the predicted latents and of the count sampling (the latents
        themselves do not depend on it).
    method, steps, guidance
        ODE solver and classifier-free guidance, as in :func:`cellflow.tl.generate`.
    sample_counts
        Sample counts from the likelihood (around a posterior draw of each latent); ``False``
        returns its mean at the latent itself (expected counts).

    Returns
    -------
    AnnData aligned to ``adata``: the same ``obs_names`` in the same order and ``adata.obs``
    with the column ``cellflow_perturbation`` (the predicted condition) added; ``X`` the
    predicted counts of the model's genes (sparse, in the model's order);
    ``obsm["X_cellflow"]`` the predicted latents and ``obsm["X_cellflow_input"]`` the cells'
    own; ``uns["cellflow_predict"]`` the settings. ``adata`` is not changed.

    Raises
    ------
    TypeError, KeyError, ValueError
        As :func:`cellflow.tl.encode` for the cells; as :func:`cellflow.tl.generate` for the
        condition and solver; a cell whose context the model does not know (the message lists
        the known ones and suggests ``context=``); a model whose flow starts from noise or that
        moves whole trajectories over time.

    Examples
    --------
    >>> pred = cf.tl.predict(model, my_control_cells, "KLF1+MAP2K6")  # doctest: +SKIP
    """
    _check_model(model)
    model._require_trained()
    module = model.module
    if model.config.source != "control":
        raise ValueError("predict carries the given cells, but this model's flow starts from noise (source='noise').")
    if module.over_time:
        raise ValueError(
            f"backbone={model.config.backbone!r} moves whole trajectories over time; single cells have no "
            "counterfactual trajectory. Use cf.tl.generate, or a backbone that takes time as part of the condition."
        )
    if not isinstance(perturbation, str):
        raise TypeError(f"perturbation must be one condition label (a string), got {type(perturbation).__name__}.")
    _check_int("seed", seed)
    _check_solver(method, steps)
    _check_guidance(model, guidance)
    (parsed,) = _parse(model, [perturbation], None if dose is None else [dose])
    method, steps = module.sampling.solver(method, steps)
    contexts = _cell_contexts(model, adata, context)  # before the (costly) encoding: fail early
    times = _cell_times(model, adata)
    latent, latent_scale, log_library, batch = encode_cells(model, adata, layer)

    codec, setup = model.codec, model.setup
    ids, doses, mask = codec.encode_conditions([parsed])
    batch = np.zeros(adata.n_obs, dtype=np.int64) if batch is None else batch
    predicted = np.empty_like(latent)
    blocks: list[tuple[np.ndarray, sp.csr_matrix]] = []
    generator = torch.Generator().manual_seed(seed)
    label = parsed.label(setup.control, setup.combo_sep)
    when = np.zeros(adata.n_obs) if times is None else times
    groups, uniques = pd.factorize(pd.MultiIndex.from_arrays([contexts, when]), sort=True)
    for group, (code, t) in enumerate(uniques):  # one ODE solve per (context, time point)
        rows = np.flatnonzero(groups == group)
        values = module.reference.contexts[code]
        covariates = codec.encode_covariates([dict(zip(codec.covariate_keys, values))])
        time = torch.tensor([float(t)])
        condition = ConditionBatch(ids, doses, mask, covariates, time, torch.tensor([code]))
        z1, _ = module.carry(torch.as_tensor(latent[rows]), condition, method=method, steps=steps, guidance=guidance)
        _check_finite(z1, label, method, steps)
        predicted[rows] = z1.numpy()
        own_library = torch.as_tensor(log_library[rows], dtype=torch.float32)
        counts = model.vae.decode(
            z1,
            module.move_library(own_library, condition)[:, None],
            torch.as_tensor(batch[rows])[:, None],
            sample=sample_counts,
            generator=generator,
            sparse=True,
            latent_scale=torch.as_tensor(latent_scale[rows]),
            gene_offset=module.gene_offset(condition),
        )
        blocks.append((rows, counts))
    return _output(model, adata, blocks, predicted, latent, label, method, steps, guidance, seed, sample_counts)


def _cell_contexts(model: CellFlow, adata, context: Mapping[str, str] | None) -> np.ndarray:
    """The context code of every cell: the given one for all, else each cell's own covariate values."""
    reference, keys = model.module.reference, model.codec.covariate_keys
    if context is not None or not keys:
        return np.full(adata.n_obs, reference.context_code(_context(model, context)), dtype=np.int64)
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        raise KeyError(
            f"adata.obs lacks the covariate column(s) {missing} of the model; add them, or pass context={{...}} "
            "to predict every cell in one known context."
        )
    values = adata.obs[list(keys)].astype(str)
    known = pd.MultiIndex.from_tuples([tuple(c) for c in reference.contexts])
    codes = known.get_indexer(pd.MultiIndex.from_frame(values))
    if (codes < 0).any():
        unknown = values[codes < 0].drop_duplicates().head(5).to_dict("records")
        known_values = [dict(zip(keys, c)) for c in reference.contexts][:10]
        raise ValueError(
            f"Contexts {unknown} are not among the model's {known_values}. Pass context={{...}} to borrow the flow "
            "of a known context for these cells."
        )
    return codes.astype(np.int64)


def _cell_times(model: CellFlow, adata) -> np.ndarray | None:
    """Every cell's experimental time, for a model that takes time as part of the condition (else ``None``)."""
    key = model.setup.time_key
    if key is None:
        return None
    if key not in adata.obs.columns:
        raise KeyError(f"adata.obs lacks the time column {key!r} the model was set up with.")
    return adata.obs[key].astype(float).to_numpy()


def _output(model, adata, blocks, predicted, latent, label, method, steps, guidance, seed, sample_counts):
    import anndata as ad

    order = np.concatenate([rows for rows, _ in blocks])
    matrix = sp.vstack([counts for _, counts in blocks], format="csr")[np.argsort(order)]
    obs = adata.obs.copy()
    obs[PREDICTED_KEY] = pd.Categorical([label] * adata.n_obs)
    out = ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=pd.Index(model.genes)))
    out.obsm[LATENT_KEY] = predicted.astype(np.float32)
    out.obsm[f"{LATENT_KEY}_input"] = np.asarray(latent, dtype=np.float32)
    out.uns["cellflow_predict"] = {
        "model": repr(model),
        "perturbation": label,
        "method": method,
        "steps": int(steps),
        "guidance": float(guidance),
        "seed": int(seed),
        "sample_counts": bool(sample_counts),
    }
    return out
