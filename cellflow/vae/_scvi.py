"""The latent space: scvi-tools' VAE, trained by scvi-tools, used as a module.

cellflow trains ``scvi.model.SCVI`` (its likelihoods, encoder, decoder and training plan)
on a private, minimal AnnData, then keeps only the torch module. Checkpoints store that
module's weights as safetensors and the arguments that rebuild it as JSON, so loading
never goes through scvi-tools' pickling save/load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

if TYPE_CHECKING:
    from collections.abc import Iterator

from .._constants import LIKELIHOODS
from ._disk import BlockShuffleDataModule, is_in_memory, read_rows
from ._dispersion import initial_log_theta
from ._sampling import offset_factor, sample_likelihood


@dataclass
class VAEConfig:
    """Arguments that rebuild the scvi-tools ``VAE`` module (saved as JSON in checkpoints)."""

    n_input: int
    n_latent: int = 32
    n_hidden: int = 128
    n_layers: int = 1
    n_batch: int = 0
    gene_likelihood: str = "nb"
    dispersion: str = "gene"
    dropout_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.gene_likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood={self.gene_likelihood!r} is not one of {LIKELIHOODS}.")

    @property
    def log_variational(self) -> bool:
        # log1p of counts stabilises the encoder input; normalised data are already on a log scale.
        return self.gene_likelihood != "normal"

    def build(self):
        """A fresh ``scvi.module.VAE`` with these arguments."""
        from scvi.module import VAE

        return VAE(
            n_input=self.n_input,
            n_batch=self.n_batch,
            n_labels=1,  # SCVI registers one dummy label when no labels_key is given
            n_hidden=self.n_hidden,
            n_latent=self.n_latent,
            n_layers=self.n_layers,
            dropout_rate=self.dropout_rate,
            dispersion=self.dispersion,
            gene_likelihood=self.gene_likelihood,
            log_variational=self.log_variational,
        )


class LatentVAE:
    """An scvi-tools VAE module with the encode / decode calls cellflow needs.

    Parameters
    ----------
    module
        A trained ``scvi.module.VAE``.
    config
        The arguments it was built with.
    """

    def __init__(self, module, config: VAEConfig) -> None:
        self.module = module.eval()
        self.config = config
        self.curves: dict[str, list[float]] = {}  # filled by fit: the ELBO per epoch

    @classmethod
    def fit(
        cls,
        matrix,
        *,
        batch: np.ndarray | None,
        config: VAEConfig,
        max_epochs: int,
        batch_size: int = 256,
        lr: float = 1e-3,
        accelerator: str = "auto",
        devices: int | str = "auto",
        progress_bar: bool = True,
        early_stopping: bool = False,
        kl_weight: float = 1.0,
        kl_warmup_epochs: int | None = 400,
        kl_warmup_steps: int | None = None,
        init_dispersion: bool = True,
        seed: int = 0,
        trainer_kwargs: dict | None = None,
    ) -> LatentVAE:
        """Train scvi-tools' SCVI on ``matrix`` (cells x genes) and keep its module.

        ``batch`` holds integer batch codes (``None`` without a batch covariate); ``seed``
        makes the run repeatable (scvi-tools reseeds from its own setting, not from torch).
        ``early_stopping`` is scvi-tools' (validation ELBO, patience 45 epochs); it is off by
        default because the validation ELBO still drifts under the KL warm-up, so it can stop
        long before the decoder is good (see the results page). ``kl_weight`` is scvi-tools'
        ``max_kl_weight``, the KL term's weight after its warm-up of ``kl_warmup_epochs`` epochs, or
        if that is ``None`` of ``kl_warmup_steps`` steps (scvi-tools' ``n_epochs_kl_warmup`` and
        ``n_steps_kl_warmup``; both ``None``: no warm-up). ``init_dispersion`` starts the
        negative binomial's gene dispersions at their method-of-moments estimate
        (:func:`~cellflow.vae._dispersion.initial_log_theta`, one pass over ``matrix``) instead of
        scvi-tools' random start, from which Adam needs thousands of steps to reach the
        near-Poisson dispersion of sparse genes; the rest of the training is scvi-tools'.

        A numpy or scipy matrix trains through scvi-tools' own data splitter (a tenth of the
        cells held out for validation). Any other matrix (a backed AnnData's ``X``: an ``h5ad``
        or zarr sparse dataset) stays on disk: scvi-tools trains from a custom data module that
        reads shuffled blocks of rows (:class:`~cellflow.vae._disk.BlockShuffleDataset`), with
        memory bounded by its buffer and every rank of a distributed run reading its own blocks.
        ``trainer_kwargs`` go to Lightning's trainer (e.g. ``strategy="ddp"``).
        """
        import scvi

        scvi.settings.seed = seed
        model_kwargs = {
            "n_latent": config.n_latent,
            "n_hidden": config.n_hidden,
            "n_layers": config.n_layers,
            "dropout_rate": config.dropout_rate,
            "dispersion": config.dispersion,
            "gene_likelihood": config.gene_likelihood,
            "log_variational": config.log_variational,
        }
        train_kwargs = {
            "max_epochs": max_epochs,
            "accelerator": accelerator,
            "devices": devices,
            "early_stopping": early_stopping,
            "enable_progress_bar": progress_bar,
            "plan_kwargs": {
                "lr": lr,
                "max_kl_weight": kl_weight,
                "n_epochs_kl_warmup": kl_warmup_epochs,
                "n_steps_kl_warmup": kl_warmup_steps,
            },
            **(trainer_kwargs or {}),
        }
        if is_in_memory(matrix):
            private = _private_anndata(matrix, batch)
            scvi.model.SCVI.setup_anndata(private, batch_key="batch" if batch is not None else None)
            model = scvi.model.SCVI(private, **model_kwargs)
            _prepare(model, matrix, config, init_dispersion)
            model.train(batch_size=batch_size, **train_kwargs)
        else:
            if early_stopping:
                raise ValueError("early_stopping needs a validation set, which training from disk does not hold out.")
            # scvi-tools' custom data modules: the registry comes from a few cells, the minibatches from disk.
            template = _private_anndata(sp.csr_matrix(read_rows(matrix, 0, min(matrix.shape[0], 64))), batch)
            scvi.model.SCVI.setup_anndata(template, batch_key="batch" if batch is not None else None)
            registry = scvi.model.SCVI(template, **model_kwargs).registry_
            model = scvi.model.SCVI(registry=registry, **model_kwargs)
            _prepare(model, matrix, config, init_dispersion)
            datamodule = BlockShuffleDataModule(matrix, batch, batch_size=batch_size, seed=seed)
            model.train(datamodule=datamodule, **train_kwargs)
        config.n_batch = model.module.n_batch
        vae = cls(model.module.cpu(), config)
        # The ELBO per epoch, as scvi-tools records it (validation only in memory).
        for key, name in (("vae_loss", "elbo_train"), ("vae_validation_loss", "elbo_validation")):
            if name in model.history:
                vae.curves[key] = [float(v) for v in np.asarray(model.history[name]).ravel()]
        return vae

    def encode(self, matrix, batch: np.ndarray | None = None, *, batch_size: int = 4096) -> np.ndarray:
        """Posterior mean of the latent for each cell (``cells x n_latent``)."""
        return self.encode_with_library(matrix, batch, batch_size=batch_size)[0]

    @torch.no_grad()
    def encode_with_library(
        self, matrix, batch: np.ndarray | None = None, *, batch_size: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means (``cells x n_latent``) and log library sizes (``cells``), in one pass over ``matrix``.

        ``matrix`` may stay on disk (a backed AnnData's ``X``): it is read ``batch_size`` rows at
        a time, so memory holds one chunk and the latents. The log library size is the log of
        the row's total, at least 1 (an empty cell gets 0).
        """
        latent, _, log_library = self.encode_posterior(matrix, batch, batch_size=batch_size)
        return latent, log_library

    @torch.no_grad()
    def encode_posterior(
        self, matrix, batch: np.ndarray | None = None, *, batch_size: int = 4096
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Posterior means and standard deviations (``cells x n_latent`` each) and log library sizes.

        As :meth:`encode_with_library`, with each cell's posterior standard deviation too: the
        flow works with the means, and generation draws around them with these
        (:meth:`decode`'s ``latent_scale``).
        """
        latents, scales, libraries = [], [], []
        for qz, log_library in self._posteriors(matrix, batch, batch_size):
            latents.append(qz.loc.cpu().numpy())
            scales.append(qz.scale.cpu().numpy())
            libraries.append(log_library)
        if not latents:
            empty = np.zeros((0, self.config.n_latent), dtype=np.float32)
            return empty, empty.copy(), np.zeros(0)
        return np.concatenate(latents, axis=0), np.concatenate(scales, axis=0), np.concatenate(libraries)

    @torch.no_grad()
    def count_sums(
        self,
        matrix,
        group: np.ndarray,
        n_groups: int,
        posterior: tuple[np.ndarray, np.ndarray, np.ndarray],
        batch: np.ndarray | None = None,
        *,
        generator: torch.Generator | None = None,
        batch_size: int = 4096,
        chunks: range | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Observed and expected counts of every gene summed over the cells of each group (``(n_groups, G)`` each).

        The expected counts are the decoder's means at one draw around each cell's posterior
        mean, with the cell's own library size (as generation decodes its cells, before counts
        are drawn). ``matrix`` is read ``batch_size`` rows at a time (it may stay on disk), so
        memory holds one chunk and the sums.

        Parameters
        ----------
        matrix
            Counts, cells x genes, in the order of the cells of ``posterior``.
        group
            ``(N,)`` group code of every cell, in ``[0, n_groups)``.
        n_groups
            Number of groups.
        posterior
            ``(N, n_latent)`` posterior means and sds and ``(N,)`` log library sizes of the cells
            (:meth:`encode_posterior`).
        batch
            ``(N,)`` VAE batch codes, or ``None``.
        generator
            Random generator of the draws around the posterior means.
        chunks
            Sum only these chunks of ``batch_size`` rows (a process's share of a distributed
            pass); ``None``: all. The draws of every chunk are taken from ``generator`` in order
            whatever the share, so the shares' sums add up to the sums of the whole pass.
        """
        if self.config.gene_likelihood == "normal":
            raise ValueError("count_sums needs a count likelihood; this VAE models log-normalised data.")
        latent, scale, log_library = posterior
        device = next(self.module.parameters()).device
        observed = torch.zeros(n_groups, self.config.n_input, dtype=torch.float64)
        expected = torch.zeros(n_groups, self.config.n_input, dtype=torch.float64)
        for index, start in enumerate(range(0, matrix.shape[0], batch_size)):
            rows = slice(start, min(start + batch_size, matrix.shape[0]))
            z = torch.as_tensor(latent[rows], dtype=torch.float32)
            noise = torch.randn(z.shape, generator=generator)  # drawn for every chunk, summed or not
            if chunks is not None and index not in chunks:
                continue
            x, b = self._block(matrix, batch, rows.start, rows.stop)
            z = z + torch.as_tensor(scale[rows], dtype=torch.float32) * noise
            library = torch.as_tensor(log_library[rows], dtype=torch.float32).view(-1, 1)
            px = self.module.generative(z.to(device), library.to(device), b)["px"]
            mean = px.rate if self.config.gene_likelihood == "poisson" else px.mu
            codes = torch.as_tensor(np.asarray(group[rows]), dtype=torch.long)
            observed.index_add_(0, codes, x.cpu().double())
            expected.index_add_(0, codes, mean.cpu().double())
        return observed.numpy(), expected.numpy()

    @torch.no_grad()
    def decode(
        self,
        z: torch.Tensor,
        log_library: torch.Tensor,
        batch: torch.Tensor | None = None,
        *,
        sample: bool = True,
        generator: torch.Generator | None = None,
        sparse: bool = False,
        latent_scale: torch.Tensor | None = None,
        gene_offset: torch.Tensor | None = None,
    ) -> torch.Tensor | sp.csr_matrix:
        """Latent + log library size -> the likelihood's parameters -> counts (or the mean).

        Parameters
        ----------
        z
            ``(N, n_latent)`` latent states.
        log_library
            ``(N, 1)`` natural log of each cell's library size.
        batch
            ``(N, 1)`` integer batch codes, or ``None`` (batch 0).
        sample
            Draw from the likelihood (counts); ``False`` returns its mean.
        generator
            Random generator for the draw, for reproducible counts.
        sparse
            Return a ``scipy.sparse.csr_matrix`` (float32) instead of a tensor. Sampled counts
            are then compressed block by block as they are drawn, in the sampling threads, so
            the dense count matrix is never formed; the counts are the same as with
            ``sparse=False``.
        latent_scale
            ``(N, n_latent)`` posterior standard deviations around ``z``, or ``None``. With
            ``sample``, each cell's latent is first drawn from ``Normal(z, latent_scale)`` (on the
            CPU, from ``generator``), as scvi-tools' posterior predictive draws it from the
            posterior: ``z`` that are posterior *means* (what the flow carries) decoded as they are
            give cells too alike, whose log-normalised means are off (the decoder is not linear).
            Ignored without ``sample`` (the mean at ``z``).
        gene_offset
            ``(N, n_genes)`` or ``(1, n_genes)`` corrections of the expected counts on the log
            scale, or ``None``: each cell's expected counts are multiplied by ``exp(gene_offset)``
            and rescaled to keep their total (the library size), before counts are drawn (a
            condition's gene offsets, :class:`~cellflow.flow.GeneOffsets`). Count likelihoods only.
        """
        device = next(self.module.parameters()).device
        if sample and latent_scale is not None:
            noise = torch.randn(z.shape, generator=generator)  # on the CPU: the same draws on any device
            z = z + latent_scale.to(z) * noise.to(z)
        z, log_library = z.to(device), log_library.to(device)
        if batch is None:
            batch = torch.zeros(z.shape[0], 1, dtype=torch.long, device=device)
        px = self.module.generative(z, log_library, batch.to(device))["px"]
        likelihood = self.config.gene_likelihood
        factor = None
        if gene_offset is not None:
            if likelihood == "normal":
                raise ValueError("gene_offset corrects expected counts; this VAE models log-normalised data.")
            factor = offset_factor(px.rate if likelihood == "poisson" else px.mu, gene_offset.to(device))
        if sample and likelihood != "normal":
            return sample_likelihood(px, likelihood, generator, sparse=sparse, factor=factor)
        if not sample:
            x = px.mean if factor is None else px.mean * factor
        else:
            x = px.loc + px.scale * torch.randn(px.loc.shape, generator=generator, device=device)
        return sp.csr_matrix(x.cpu().numpy().astype(np.float32, copy=False)) if sparse else x

    def _posteriors(self, matrix, batch, batch_size) -> Iterator[tuple[torch.distributions.Normal, np.ndarray]]:
        """Each chunk's posterior ``q(z | x)`` and log library sizes (float64: log of the total, at least 1)."""
        for x, b in self._batches(matrix, batch, batch_size):
            yield self.module.inference(x, b)["qz"], np.log(np.maximum(x.sum(dim=1).double().cpu().numpy(), 1.0))

    def _batches(self, matrix, batch, batch_size) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, matrix.shape[0], batch_size):
            yield self._block(matrix, batch, start, start + batch_size)

    def _block(self, matrix, batch, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts and batch codes (``(n, 1)``) of rows ``start:stop``, on the module's device."""
        device = next(self.module.parameters()).device
        x = torch.as_tensor(read_rows(matrix, start, stop), device=device)
        if batch is None:
            return x, torch.zeros(x.shape[0], 1, dtype=torch.long, device=device)
        return x, torch.as_tensor(np.asarray(batch[start:stop]), device=device).long().view(-1, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The module's weights."""
        return {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], config: VAEConfig) -> LatentVAE:
        """Rebuild the module from its config and load the weights (strictly)."""
        module = config.build()
        module.load_state_dict(state, strict=True)
        return cls(module, config)

    def config_dict(self) -> dict:
        """The config as a JSON-ready dict."""
        return asdict(self.config)


def _prepare(model, matrix, config: VAEConfig, init_dispersion: bool) -> None:
    """Give ``model`` cellflow's training plan and, if asked, the dispersions' moment estimate as start."""
    from ._plan import EpochLoggingPlan  # it subclasses scvi-tools' plan: scvi is imported when training only

    model._training_plan_cls = EpochLoggingPlan
    # Only the negative binomials have a learned per-gene (or per-gene-and-batch) dispersion.
    if init_dispersion and config.gene_likelihood in ("nb", "zinb") and config.dispersion in ("gene", "gene-batch"):
        px_r = model.module.px_r  # (genes,) or (genes, batches): log theta
        start = torch.as_tensor(initial_log_theta(matrix), dtype=px_r.dtype)
        with torch.no_grad():
            px_r.copy_(start.view(-1, *([1] * (px_r.dim() - 1))).expand_as(px_r))


def _private_anndata(matrix, batch: np.ndarray | None):
    """An AnnData of ``matrix`` that scvi-tools may register itself in (never the user's object).

    The batch categories are the codes in numeric order, so scvi-tools' internal code of a batch
    is the code itself (string order would put "10" before "2").
    """
    import anndata as ad

    obs = pd.DataFrame(index=[str(i) for i in range(matrix.shape[0])])
    if batch is not None:
        codes = np.asarray(batch).astype(np.int64)
        categories = [str(i) for i in range(int(codes.max()) + 1)]
        obs["batch"] = pd.Categorical(codes[: matrix.shape[0]].astype(str), categories=categories)
    return ad.AnnData(X=matrix, obs=obs)
