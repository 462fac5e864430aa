"""``cf.tl.encode``: the latent representation of cells."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._constants import LATENT_KEY

if TYPE_CHECKING:
    from anndata import AnnData

    from ..models._cellflow import CellFlow

logger = logging.getLogger("cellflow")


def encode(
    model: CellFlow, adata: AnnData, *, layer: str | None = None, key_added: str = LATENT_KEY, copy: bool = False
):
    """Encode cells into the model's latent space (the VAE's posterior mean).

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
    """
    model._require_trained()
    genes = pd.Index(model.genes)
    missing = genes.difference(adata.var_names)
    if len(missing):
        raise ValueError(f"adata lacks {len(missing)} of the model's genes (e.g. {list(missing[:5])}).")
    layer = layer if layer is not None else model.setup.layer
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"layer={layer!r} is not in adata.layers; pass layer=None to use adata.X.")
    matrix = adata.layers[layer] if layer is not None else adata.X
    if not adata.var_names.equals(genes):
        matrix = matrix[:, adata.var_names.get_indexer(genes)]
    batch = None
    if model.config.batch_key is not None:
        values = adata.obs[model.config.batch_key].astype(str)
        unknown = sorted(set(values) - set(model.batch_categories))
        if unknown:
            raise ValueError(f"Batches {unknown[:5]} were not seen in training; the VAE cannot encode them.")
        batch = pd.Categorical(values, categories=model.batch_categories).codes.astype(np.int64)
    latent = model.vae.encode(matrix, batch)
    target = adata.copy() if copy else adata
    target.obsm[key_added] = latent
    logger.info("added %r (adata.obsm)", key_added)
    return target if copy else None
