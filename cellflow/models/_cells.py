"""The training cells through the VAE: fitting it on the counts, and the latents the flow trains on."""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch

from ..train import VAETrainingConfig
from ..train._interrupt import interruptible
from ..train._plan import chunk_share, rank_and_world_size
from ..train._quiet import quiet_lightning
from ..vae import LatentVAE, VAEConfig
from ..vae._disk import RowRange
from ._config import CellFlowConfig


@dataclass
class EncodedCells:
    """The training cells as the flow sees them: latents (posterior means), VAE batch codes and log library sizes.

    ``latent_scale`` holds each cell's posterior standard deviations, with which generation draws
    around the flow's latents.
    """

    latent: np.ndarray
    batch: np.ndarray | None
    log_library: np.ndarray
    latent_scale: np.ndarray


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


def vae_config(config: CellFlowConfig, n_genes: int) -> VAEConfig:
    """The scvi-tools VAE a model of ``config`` builds for ``n_genes`` genes."""
    return VAEConfig(
        n_input=n_genes,
        n_latent=config.latent_dim,
        n_hidden=config.vae_hidden,
        n_layers=config.vae_layers,
        gene_likelihood=config.likelihood,
    )


def fit_vae(
    adata,
    setup,
    config: CellFlowConfig,
    training: VAETrainingConfig,
    *,
    accelerator: str,
    devices,
    progress_bar: bool,
    trainer_kwargs: dict | None = None,
) -> tuple[LatentVAE, list[str]]:
    """Train scvi-tools' VAE on the registered counts (seeded by ``config.seed``), and its batch categories.

    With a distributed strategy in ``trainer_kwargs`` (e.g. ``{"strategy": "ddp"}`` and
    ``devices=4``), each process takes ``batch_size / processes`` cells per step, so the global
    minibatch is ``batch_size`` whatever the number of processes.
    """
    pl.seed_everything(config.seed, verbose=False)
    categories, batch = batch_codes(adata, config.batch_key)
    epochs = training.epochs_for(adata.n_obs)
    with quiet_lightning(), interruptible():
        vae = LatentVAE.fit(
            expression(adata, setup),
            batch=batch,
            config=vae_config(config, adata.n_vars),
            max_epochs=epochs,
            **training.kl_warmup_for(epochs, adata.n_obs),
            batch_size=max(2, training.batch_size // processes(devices, trainer_kwargs)),
            lr=training.lr,
            init_dispersion=training.init_dispersion,
            accelerator=accelerator,
            devices=devices,
            progress_bar=progress_bar,
            kl_weight=config.vae_kl_weight,
            seed=config.seed,
            trainer_kwargs=_vae_trainer_options(trainer_kwargs),
        )
    _share_rank_zero_state(vae.module)
    return vae, categories


def _share_rank_zero_state(module) -> None:
    """Under DDP, give every rank rank 0's weights and buffers.

    DDP keeps the parameters equal but not the batch-norm statistics, which each rank updates
    from its own minibatches after DDP's broadcast; without this, ranks would encode the cells
    into slightly different latent spaces and train the flow on different data.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for tensor in module.state_dict().values():
        torch.distributed.broadcast(tensor, src=0)


def _vae_trainer_options(trainer_kwargs: dict | None) -> dict | None:
    # scvi-tools' VAE leaves its library-size encoder unused with observed library sizes, which
    # plain DDP refuses; scvi-tools' documentation trains it with this variant.
    strategy = (trainer_kwargs or {}).get("strategy")
    if strategy in ("ddp", "ddp_spawn", "ddp_notebook"):
        return {**trainer_kwargs, "strategy": f"{strategy}_find_unused_parameters_true"}
    return trainer_kwargs


DISTRIBUTED_OPTIONS = ("strategy", "num_nodes")
"""Options of Lightning's trainer that :meth:`~cellflow.CellFlow.train` passes to the VAE's trainer too."""


def processes(devices, trainer_kwargs: dict | None) -> int:
    """Processes of a distributed run (devices per node x nodes); 1 without a strategy.

    Raises
    ------
    ValueError
        A strategy with ``devices`` that is not a positive number: the per-process batch
        could not keep the global one.
    """
    options = trainer_kwargs or {}
    if options.get("strategy") is None:
        return 1
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(
            f"With strategy={options['strategy']!r}, give devices as a number of devices per node "
            f"(e.g. devices=4), not {devices!r}, so that each process takes its share of the minibatch."
        )
    return devices * int(options.get("num_nodes", 1))


def encode_cells(vae: LatentVAE, adata, setup, batch_key: str | None, categories: list[str]) -> EncodedCells:
    """Encode every cell once (the VAE's posterior means and sds) and keep its batch code and log library size.

    Under distributed training (an initialised process group, as after Lightning's DDP) each of
    the ``W`` processes encodes a contiguous ``W``-th of the cells and all of them gather the
    whole: every rank then holds the same latents, those one process would compute (the shares
    are cut at the encoder's chunks, so each cell is encoded in the same chunk either way).
    Every rank must call it.
    """
    _, batch = batch_codes(adata, batch_key, categories)
    matrix = expression(adata, setup)
    world = rank_and_world_size()[1]
    if world == 1:
        latent, scale, log_library = vae.encode_posterior(matrix, batch, batch_size=ENCODE_CHUNK)
        return EncodedCells(latent=latent, batch=batch, log_library=log_library, latent_scale=scale)
    chunks = chunk_share(adata.n_obs, ENCODE_CHUNK)
    start, stop = (min(adata.n_obs, ENCODE_CHUNK * c) for c in (chunks.start, chunks.stop))
    share = vae.encode_posterior(
        RowRange(matrix, start, stop), None if batch is None else batch[start:stop], batch_size=ENCODE_CHUNK
    )
    shares = [None] * world
    torch.distributed.all_gather_object(shares, share)
    latent, scale, log_library = (np.concatenate(parts) for parts in zip(*shares))
    return EncodedCells(latent=latent, batch=batch, log_library=log_library, latent_scale=scale)


ENCODE_CHUNK = 4096
"""Cells encoded at once in the latent pass (memory holds one chunk of counts and the latents)."""
