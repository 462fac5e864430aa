"""The training cells through the VAE: fitting it on the counts, and the latents the flow trains on."""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import pandas as pd

from ..train import VAETrainingConfig
from ..train._interrupt import interruptible
from ..train._quiet import quiet_lightning
from ..vae import LatentVAE, VAEConfig
from ._config import CellFlowConfig


@dataclass
class EncodedCells:
    """The training cells as the flow sees them: latents, VAE batch codes and log library sizes."""

    latent: np.ndarray
    batch: np.ndarray | None
    log_library: np.ndarray


def expression(adata, setup):
    """The registered expression matrix (``setup.layer``, else ``X``)."""
    return adata.layers[setup.layer] if setup.layer else adata.X


def batch_codes(adata, batch_key: str | None, categories: list[str] | None = None):
    """VAE batch categories and every cell's code (``None`` without a ``batch_key``)."""
    if batch_key is None:
        return [], None
    values = adata.obs[batch_key].astype(str)
    categorical = pd.Categorical(values, categories=categories) if categories else pd.Categorical(values)
    return list(categorical.categories), categorical.codes.astype(np.int64)


def fit_vae(
    adata,
    setup,
    config: CellFlowConfig,
    training: VAETrainingConfig,
    *,
    accelerator: str,
    devices,
    progress_bar: bool,
) -> tuple[LatentVAE, list[str]]:
    """Train scvi-tools' VAE on the registered counts (seeded by ``config.seed``), and its batch categories."""
    pl.seed_everything(config.seed, verbose=False)
    categories, batch = batch_codes(adata, config.batch_key)
    vae_config = VAEConfig(
        n_input=adata.n_vars,
        n_latent=config.latent_dim,
        n_hidden=config.vae_hidden,
        n_layers=config.vae_layers,
        gene_likelihood=config.likelihood,
    )
    with quiet_lightning(), interruptible():
        vae = LatentVAE.fit(
            expression(adata, setup),
            batch=batch,
            config=vae_config,
            max_epochs=training.epochs_for(adata.n_obs),
            batch_size=training.batch_size,
            accelerator=accelerator,
            devices=devices,
            progress_bar=progress_bar,
            kl_weight=config.vae_kl_weight,
            seed=config.seed,
        )
    return vae, categories


def encode_cells(vae: LatentVAE, adata, setup, batch_key: str | None, categories: list[str]) -> EncodedCells:
    """Encode every cell once (the VAE's posterior means) and keep its batch code and log library size."""
    _, batch = batch_codes(adata, batch_key, categories)
    latent, log_library = vae.encode_with_library(expression(adata, setup), batch)
    return EncodedCells(latent=latent, batch=batch, log_library=log_library)
