"""Training of a :class:`~cellflow.CellFlow`: the VAE, the flow, reflow, and their all-or-nothing stages.

A mixin (scvi-tools' ``UnsupervisedTrainingMixin`` pattern): the methods users call to train,
kept apart from the model's construction, state and checkpoints in ``models/_cellflow.py``. They
check options and delegate: the VAE to ``models/_cells.py``, the flow to :mod:`cellflow.train`,
resumable runs to ``models/_stages.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from ..flow import SamplingInfo
from ..train import (
    FlowTrainingConfig,
    ReflowConfig,
    VAETrainingConfig,
    check_validation_split,
    fit_gene_offsets,
    fit_latent_arithmetic,
    flow_loss,
    reflow,
    resolve_coupling,
    train_flow,
    validation_split,
)
from ._cells import EncodedCells, expression, fit_vae, processes
from ._presets import get_preset
from ._stages import train_in_stages


class TrainingMixin:
    """The training methods of :class:`~cellflow.CellFlow`: train, train_vae, train_flow, reflow, flow_loss."""

    def train(
        self,
        *,
        vae_epochs: int | None = None,
        flow_steps: int | None = None,
        lr: float | None = None,
        reflow_rounds: int | None = None,
        accelerator: str = "auto",
        devices: int | str = "auto",
        progress_bar: bool = True,
        vae_kwargs: dict | None = None,
        flow_kwargs: dict | None = None,
        reflow_kwargs: dict | None = None,
        trainer_kwargs: dict | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> TrainingMixin:
        """Train the VAE (scvi-tools), encode every cell once, train the flow (Lightning), then reflow it.

        Every option is checked before the VAE starts, so a bad one costs no training time.

        Parameters
        ----------
        vae_epochs
            Epochs of the VAE (default: about 8,000 gradient steps, 3,600 with the preset
            ``"fast"``; see :class:`~cellflow.train.VAETrainingConfig`).
        flow_steps
            Gradient steps of the flow (default: the model's preset's, 1,000 or 2,000 with
            ``"long"``; :class:`~cellflow.train.FlowTrainingConfig`).
        lr
            Learning rate of the flow.
        reflow_rounds
            Rounds of :meth:`reflow` after the flow (0: none; the default except with the
            preset ``"long"``: 1). Reflow straightens the flow so that a few Euler steps
            generate what many solver steps did.
        accelerator, devices
            Passed to Lightning (``"cpu"``, ``"gpu"``, ``"auto"``; device count).
        progress_bar
            Show progress bars.
        vae_kwargs, flow_kwargs, reflow_kwargs
            Other options of :class:`~cellflow.train.VAETrainingConfig`,
            :class:`~cellflow.train.FlowTrainingConfig` (minibatch shape, coupling, condition
            dropout, early stopping, precision, ...) and :class:`~cellflow.train.ReflowConfig`.
        trainer_kwargs
            Extra arguments of Lightning's ``Trainer`` for the flow and reflow. Its
            ``strategy`` and ``num_nodes`` also go to the VAE's trainer, so that
            ``devices=4, trainer_kwargs={"strategy": "ddp"}`` trains both stages on 4 processes
            (the docs' page on many GPUs shows a script and a SLURM job).
        checkpoint_dir
            A folder that keeps each finished stage and a checkpoint of the flow every 50
            steps. A run stopped at any point (an error, Ctrl-C, a killed job) and started
            again with the same folder, data and options resumes there and ends with the model
            an uninterrupted run gives (bit for bit on the CPU; on a GPU, up to the
            nondeterminism of its kernels; not with dropout inside the backbone, whose draws
            come from torch's global stream). A folder of another run is refused.

        Returns
        -------
        The model itself, trained.
        """
        preset = get_preset(self.preset)  # its lengths are defaults; the options given here win
        vae = VAETrainingConfig.from_kwargs({**preset.vae, **(vae_kwargs or {}), **_given(epochs=vae_epochs)})
        flow = FlowTrainingConfig.from_kwargs({**preset.flow, **(flow_kwargs or {}), **_given(steps=flow_steps, lr=lr)})
        again = ReflowConfig.from_kwargs({**preset.reflow, **(reflow_kwargs or {}), **_given(rounds=reflow_rounds)})
        flow = resolve_coupling(flow, self.module)
        self._require_data()
        check_validation_split(len({c for c in self._conditions if not c.is_control}), flow.validation_fraction)
        processes(devices, trainer_kwargs)  # a bad device count for a distributed run, before any training
        hardware = {"accelerator": accelerator, "devices": devices, "progress_bar": progress_bar}
        folder = None if checkpoint_dir is None else Path(checkpoint_dir)
        train_in_stages(self, folder, vae, flow, again, hardware=hardware, trainer_kwargs=trainer_kwargs)
        return self

    def train_vae(
        self,
        *,
        accelerator: str = "auto",
        devices: int | str = "auto",
        progress_bar: bool = True,
        trainer_kwargs: dict | None = None,
        **options,
    ) -> TrainingMixin:
        """Train the VAE (scvi-tools) and encode every training cell once (first half of :meth:`train`).

        Parameters
        ----------
        accelerator, devices, progress_bar
            As in :meth:`train`.
        trainer_kwargs
            Extra arguments of the VAE's Lightning trainer (scvi-tools'), e.g. ``strategy="ddp"``
            and ``num_nodes``; the global minibatch stays ``batch_size`` (see
            :func:`~cellflow.models._cells.fit_vae`).
        **options
            Options of :class:`~cellflow.train.VAETrainingConfig` (``epochs``, ``batch_size``).
        """
        config = VAETrainingConfig.from_kwargs(options)
        adata = self._require_data()
        start = time.perf_counter()
        with self._stage():
            vae, categories = fit_vae(
                adata,
                self.setup,
                self.config,
                config,
                accelerator=accelerator,
                devices=devices,
                progress_bar=progress_bar,
                trainer_kwargs=trainer_kwargs,
            )
            self._use_latent_space(vae, categories)
            self._encoded_cells()
        self.history["vae_seconds"] = time.perf_counter() - start
        for key in ("vae_loss", "vae_validation_loss"):  # per epoch; none left from an earlier VAE
            self.history.pop(key, None)
        self.history |= vae.curves
        return self

    def train_flow(
        self,
        *,
        accelerator: str = "auto",
        devices: int | str = "auto",
        progress_bar: bool = True,
        trainer_kwargs: dict | None = None,
        checkpoint_dir: str | Path | None = None,
        **options,
    ) -> TrainingMixin:
        """Train the flow on the latents of the VAE (second half of :meth:`train`).

        Calling it again (also on a model loaded with its training data) trains the flow
        further from its current weights with the same VAE, and undoes any reflow.

        Parameters
        ----------
        accelerator, devices, progress_bar, trainer_kwargs
            As in :meth:`train`.
        checkpoint_dir
            Keep a Lightning checkpoint of this stage there every 50 steps; a call that finds
            one resumes from it (same options and data) to the result of a run never stopped.
        **options
            Options of :class:`~cellflow.train.FlowTrainingConfig` (``steps``, ``lr``,
            ``coupling``, ``condition_dropout``, ``validation_fraction``, ...).
        """
        config = resolve_coupling(FlowTrainingConfig.from_kwargs(options), self.module)
        self._require_data()
        if self.vae is None:
            raise RuntimeError("Train the VAE first: model.train_vae() (or model.train() for both).")
        cells, cfg = self._encoded_cells(), self.config
        pl.seed_everything(cfg.seed, verbose=False)
        start = time.perf_counter()
        design = self._design()
        hardware = {"accelerator": accelerator, "devices": devices, "progress_bar": progress_bar}
        checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        with self._stage():
            self._fit_flow(design, cells, config, hardware, trainer_kwargs, checkpoint_dir, start)
        return self

    def _fit_flow(self, design, cells, config, hardware, trainer_kwargs, checkpoint_dir, start) -> None:
        setup, cfg = self.setup, self.config
        fit_latent_arithmetic(
            self.module,
            design,
            cells.latent,
            cells.log_library,
            cells.batch,
            self._conditions,
            self.codec.tokens,
            source_shift=cfg.source_shift,
            latent_scale=cells.latent_scale,
        )
        self.module.gene_offsets = None
        if cfg.gene_offsets:
            strength = fit_gene_offsets(
                self.module,
                self.vae,
                expression(self.adata, setup),
                design,
                (cells.latent, cells.latent_scale, cells.log_library),
                cells.batch,
                self._conditions,
                self.codec.tokens,
                seed=cfg.seed,
                combinations=cfg.combination_offsets,
            )
            self.history["gene_offset_prior_strength"] = strength
            self.history["gene_offset_combination_scale"] = self.module.gene_offsets.shifts.combination_scale
        validation_groups = None
        if config.validation_fraction > 0:
            validation_groups = validation_split(design, config.validation_fraction, cfg.seed)
            held = np.isin(design.group, validation_groups.numpy())
            validation_conditions = sorted(
                {self._conditions[i].label(setup.control, setup.combo_sep) for i in np.flatnonzero(held)}
            )
        fit = train_flow(
            self.module,
            design,
            cells.latent,
            config,
            seed=cfg.seed,
            validation_groups=validation_groups,
            trainer_kwargs=trainer_kwargs,
            checkpoint_dir=checkpoint_dir,
            **hardware,
        )
        self.flow_config = config
        for key in (
            "flow_best_step",
            "flow_best_val_loss",
            "validation_conditions",
            "reflow_seconds",
            "reflow_final_loss",
            "flow_validation_loss",
            "reflow_loss",
        ):
            self.history.pop(key, None)  # left by an earlier run
        self.history |= {
            "flow_seconds": time.perf_counter() - start,
            "flow_final_loss": fit["final_loss"],
            "flow_steps": fit["steps"],
            "flow_loss": fit["curve"],
        }
        if validation_groups is not None:
            self.history |= {
                "validation_conditions": validation_conditions,
                "flow_best_step": fit["best_step"],
                "flow_best_val_loss": fit["best_val_loss"],
                "flow_validation_loss": fit["validation_curve"],
            }

    def reflow(
        self,
        *,
        accelerator: str = "auto",
        devices: int | str = "auto",
        progress_bar: bool = True,
        trainer_kwargs: dict | None = None,
        **options,
    ) -> TrainingMixin:
        """Straighten the trained flow so that few solver steps suffice (reflow, then distillation).

        Each round draws fresh source cells for every training group, carries them with the
        current flow's ODE, and trains the flow further on these fixed (source, end point)
        pairs (Liu et al. 2023, "Flow straight and fast"). Straighter paths lose less to
        coarse Euler steps. For a backbone over time, a pair is a whole trajectory. Works on a
        model loaded with its training data (:meth:`load` with ``adata``).

        Parameters
        ----------
        accelerator, devices, progress_bar, trainer_kwargs
            As in :meth:`train`.
        **options
            Options of :class:`~cellflow.train.ReflowConfig` (``rounds``, ``steps``,
            ``pairs_per_group``, ``distill_steps``, ...).
        """
        config = ReflowConfig.from_kwargs(options)
        if config.rounds < 1:
            raise ValueError(f"reflow needs rounds at least 1, got {config.rounds}.")
        self._require_trained()
        self._require_data()
        flow_config = resolve_coupling(self.flow_config or FlowTrainingConfig(), self.module)
        start = time.perf_counter()
        with self._stage():
            fit = reflow(
                self.module,
                self._design(),
                self._encoded_cells().latent,
                flow_config,
                config,
                steps=config.steps_after(flow_config.steps),
                seed=self.config.seed,
                accelerator=accelerator,
                devices=devices,
                progress_bar=progress_bar,
                trainer_kwargs=trainer_kwargs,
            )
        self.history["reflow_final_loss"] = fit["final_loss"]
        self.history["reflow_loss"] = fit["curve"]
        self.history["reflow_seconds"] = time.perf_counter() - start
        return self

    def flow_loss(self, *, validation: bool = True) -> float:
        """Flow-matching loss of the current flow on fixed minibatches, as early stopping computes it.

        Parameters
        ----------
        validation
            On the conditions held out for early stopping by the last :meth:`train_flow` (it
            needs ``validation_fraction > 0``): the validation loss of training. ``False``: on
            every training condition.

        Returns
        -------
        The loss, averaged over the cells of the minibatches.
        """
        self._require_trained()
        self._require_data()
        config = resolve_coupling(self.flow_config or FlowTrainingConfig(), self.module)
        design = self._design()
        if validation:
            if config.validation_fraction == 0:
                raise ValueError("The flow was trained without a validation split; use validation=False.")
            groups = validation_split(design, config.validation_fraction, self.config.seed)
        else:
            groups = torch.arange(design.n_groups)
        latent = self._encoded_cells().latent
        return flow_loss(self.module, design, latent, config, groups, seed=self.config.seed)

    def use_vae(self, other: TrainingMixin) -> TrainingMixin:
        """Take over the trained VAE of ``other`` (trained on the same cells) instead of training one.

        Several backbones or flow settings can then be compared on one autoencoder, and the VAE
        is trained once. Call :meth:`train_flow` next.

        Parameters
        ----------
        other
            A model with a trained VAE and the same cells, genes, ``latent_dim`` and ``batch_key``.

        Returns
        -------
        The model itself.
        """
        if other.vae is None:
            raise ValueError("use_vae needs a model whose VAE was trained (other.train_vae()).")
        if self.adata is None or other.adata is None:
            raise ValueError("use_vae needs both models built on (or attached to) training data.")
        same = self.adata.n_obs == other.adata.n_obs and list(self.adata.obs_names) == list(other.adata.obs_names)
        if not same or self.genes != other.genes:
            raise ValueError("use_vae needs a model trained on the same cells and genes as this one.")
        if (self.config.latent_dim, self.config.batch_key) != (other.config.latent_dim, other.config.batch_key):
            raise ValueError(
                f"use_vae needs the same latent_dim and batch_key; got {self.config.latent_dim}, "
                f"{self.config.batch_key!r} here and {other.config.latent_dim}, {other.config.batch_key!r} there."
            )
        self._use_latent_space(other.vae, other.batch_categories, other._encoded_cells())
        self.history["vae_seconds"] = other.history.get("vae_seconds", float("nan"))
        return self

    # ------------------------------------------------------------------ stages
    @contextmanager
    def _stage(self) -> Iterator[None]:
        """All or nothing: a training stage that does not finish (an error, Ctrl-C) leaves the model as it was."""
        saved = (self.module.snapshot(), self.flow_config, dict(self.history))
        latent_space = (self.vae, list(self.batch_categories), self._cells)
        try:
            yield
        except BaseException:
            self.module.restore(saved[0])
            self.flow_config, self.history = saved[1], saved[2]
            self.vae, self.batch_categories, self._cells = latent_space
            raise

    def _use_latent_space(self, vae, batch_categories, cells: EncodedCells | None = None) -> None:
        """Take a (new) VAE; a flow trained in another latent space no longer applies, so it is marked untrained."""
        if vae is not self.vae and self.module.reference is not None:
            snapshot = self.module.snapshot()
            self.module.restore(
                {
                    **snapshot,
                    "shifts": None,
                    "library_shifts": None,
                    "gene_offsets": None,
                    "reference": None,
                    "sampling": SamplingInfo(),
                }
            )
            self.flow_config = None
        self.vae, self.batch_categories, self._cells = vae, list(batch_categories), cells


def _given(**options) -> dict:
    """The options that were given (not ``None``)."""
    return {k: v for k, v in options.items() if v is not None}
