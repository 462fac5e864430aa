"""``cf.tl.encode``: the latent representation of cells."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from .._constants import LATENT_KEY
from ..models._cellflow import CellFlow
from ..pp._expression import INTEGER_SAMPLE, check_expression

if TYPE_CHECKING:
    from anndata import AnnData


logger = logging.getLogger("cellflow")


def encode(
    model: CellFlow, adata: AnnData, *, layer: str | None = None, key_added: str = LATENT_KEY, copy: bool = False
):
    """Encode cells into the model's latent space (the VAE's posterior mean).

    Every check runs before anything is encoded; ``adata`` gets nothing but ``obsm[key_added]``
    (and nothing at all with ``copy=True``).

    Parameters
    ----------
    model
        A trained :class:`~cellflow.CellFlow`.
    adata
        Cells with (at least) the model's genes; they are matched by name.
    layer
        Layer with the expression; default: the layer the model was set up with, else ``X``.
    key_added
        Key of ``adata.obsm`` to write.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the copy), with ``adata.obsm[key_added]``: ``cells x latent_dim``.

    Raises
    ------
    TypeError
        A ``model`` or ``adata`` of the wrong kind, an option of the wrong type, expression that is
        not numeric.
    KeyError
        A layer, or the model's ``batch_key`` column, that ``adata`` lacks.
    ValueError
        ``adata`` with no cells, missing or duplicated model genes, batches not seen in training,
        and expression values of the model's genes that are NaN or infinite, or, for a model set
        up with raw counts (``model.setup.counts``), negative, above ``1e9``, or not integers
        (log-normalised data; checked on a sample of up to 100,000 nonzero values).
    """
    _check_arguments(model, adata, layer=layer, key_added=key_added, copy=copy)
    latent = encode_cells(model, adata, layer).latent
    target = adata.copy() if copy else adata
    target.obsm[key_added] = latent
    logger.info("added %r (adata.obsm)", key_added)
    return target if copy else None


class EncodedInput(NamedTuple):
    """A user's cells in the model's latent space: posterior means and sds, log library sizes, VAE batch codes."""

    latent: np.ndarray
    latent_scale: np.ndarray
    log_library: np.ndarray
    batch: np.ndarray | None


def encode_cells(model: CellFlow, adata: AnnData, layer: str | None = None) -> EncodedInput:
    """Check and encode cells (the model's genes in its order): see :class:`EncodedInput`.

    Shared by :func:`encode` and :func:`cellflow.tl.predict`; raises what :func:`encode` documents.
    """
    model._require_trained()
    if adata.n_obs == 0:
        raise ValueError("adata has 0 cells; there is nothing to encode. Pass an AnnData with cells.")
    genes = pd.Index(model.genes)
    missing = genes.difference(adata.var_names)
    if len(missing):
        raise ValueError(f"adata lacks {len(missing)} of the model's genes (e.g. {list(missing[:5])}).")
    columns = _gene_positions(adata.var_names, genes)
    layer = layer if layer is not None else model.setup.layer
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"layer={layer!r} is not in adata.layers; pass layer=None to use adata.X.")
    matrix = adata.layers[layer] if layer is not None else adata.X
    where = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
    check_expression(
        matrix,
        counts=model.setup.counts,
        where=where,
        columns=columns,
        integer_sample=INTEGER_SAMPLE,
        model=True,
    )
    batch = _batch_codes(model, adata)
    if columns is not None:
        matrix = matrix[:, columns]
    return EncodedInput(*model.vae.encode_posterior(matrix, batch), batch)


def _check_arguments(model, adata, *, layer, key_added, copy) -> None:
    from anndata import AnnData

    if not isinstance(model, CellFlow):
        raise TypeError(f"model must be a trained cf.CellFlow, got {type(model).__name__}.")
    if not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData (cells x genes), got {type(adata).__name__}.")
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"layer must be the name of a layer (a string) or None, got {layer!r}.")
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"key_added must be a non-empty string (a key of adata.obsm), got {key_added!r}.")
    if not isinstance(copy, bool | np.bool_):
        raise TypeError(f"copy must be True or False, got {copy!r}.")


def _gene_positions(var_names: pd.Index, genes: pd.Index) -> np.ndarray | None:
    """Columns of the model's genes in ``adata`` (``None``: ``adata`` holds exactly them, in order)."""
    if var_names.equals(genes):
        return None
    duplicated = var_names.duplicated(keep=False)
    if duplicated.any():
        twice = pd.Index(var_names[duplicated]).unique()
        clash = twice[twice.isin(genes)]
        if len(clash):
            raise ValueError(
                f"adata.var_names holds {len(clash)} of the model's genes more than once (e.g. {list(clash[:5])}), "
                "so it is ambiguous which column to encode. Drop the duplicated columns, or run "
                "adata.var_names_make_unique() and keep the model's gene names on the columns to use."
            )
    unique = var_names[~duplicated]
    return np.flatnonzero(~duplicated)[unique.get_indexer(genes)]


def _batch_codes(model: CellFlow, adata: AnnData) -> np.ndarray | None:
    key = model.config.batch_key
    if key is None:
        return None
    if key not in adata.obs.columns:
        raise KeyError(
            f"adata.obs lacks the column {key!r}: the model's VAE was trained with batch_key={key!r}, so each "
            "cell's batch is needed to encode it."
        )
    values = adata.obs[key].astype(str)
    unknown = sorted(set(values) - set(model.batch_categories))
    if unknown:
        raise ValueError(
            f"Batches {unknown[:5]} of adata.obs[{key!r}] were not seen in training; the VAE cannot encode them "
            f"(known batches: {list(model.batch_categories)[:20]})."
        )
    return pd.Categorical(values, categories=model.batch_categories).codes.astype(np.int64)
