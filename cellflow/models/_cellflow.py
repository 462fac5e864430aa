"""``cf.CellFlow``: the user-facing model (AnnData in, AnnData out).

Longer than the package's other files because its docstrings document every option a user
sets; the code itself checks inputs and delegates: the flow to :mod:`cellflow.flow`, training to
:mod:`cellflow.train`, the VAE to ``models/_cells.py``, checkpoints to ``models/_persistence.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch

from ..backbones import get_backbone
from ..flow import FlowModule, SamplingInfo
from ..pp._codec import ConditionCodec
from ..pp._setup import get_setup, setup_conditions
from ..train import (
    FlowTrainingConfig,
    ReflowConfig,
    VAETrainingConfig,
    build_training_design,
    check_validation_split,
    fit_latent_arithmetic,
    flow_loss,
    reflow,
    resolve_coupling,
    train_flow,
    validation_split,
)
from ._build import (
    backbone_name,
    build_flow_module,
    check_model_inputs,
    check_trainable,
    dose_range,
    embedding_hint,
    time_scale,
    token_vocabulary,
)
from ._cells import EncodedCells, encode_cells, fit_vae
from ._config import CellFlowConfig
from ._persistence import load_model, save_model
from ._stages import train_in_stages

if TYPE_CHECKING:
    from anndata import AnnData

    from ..vae import LatentVAE


class CellFlow:
    """Predict perturbed cells with a rectified flow in an scvi-tools latent space.

    A VAE (scvi-tools) encodes counts into a latent space. A rectified flow, conditioned on
    an embedding of the perturbation set and the covariates, carries control cells of the
    same context (or noise) to perturbed cells there. The decoder maps the predicted
    latents back to counts. The flow itself is a :class:`~cellflow.flow.FlowModule`
    (``model.module``); this class handles the AnnData side: checks, training, saving.

    Parameters
    ----------
    adata
        Training data, registered with :func:`cellflow.pp.setup`.
    backbone
        Velocity network: a registered name (``"mlp"``, ``"set_attention"``, ``"mamba"``) or a
        :class:`~cellflow.backbones.Backbone` subclass registered by the user. ``"mlp"``
        and ``"set_attention"`` take experimental time (if any) as part of the condition: one
        flow per time point. A backbone over time (``"mamba"``) moves whole trajectories
        through the training time points; it needs ``cf.pp.setup(..., time_key=...)`` and every
        condition (and the controls of its context) measured at every time point.
    latent_dim
        Size of the latent space.
    likelihood
        ``"nb"`` (default), ``"zinb"``, ``"poisson"`` for counts; ``"normal"`` for
        log-normalised data (``cf.pp.setup(..., counts=False)``).
    batch_key
        Column of ``adata.obs`` with technical batches, a covariate of the VAE.
    source
        ``"control"`` (control cells of the same context) or ``"noise"``.
    source_shift
        The latent arithmetic the flow runs relative to (scGen-style mean shifts in the VAE
        latent: the flow's targets are the cells minus their condition's shift, and generation
        adds the shift back after the ODE). ``"measured"`` (default with ``source="control"``): a condition
        measured in training is shifted by its own mean latent shift, any other by the sum of
        its tokens' shifts measured on single perturbations; the flow learns the change of
        shape, and the mean of an unseen combination is latent arithmetic. ``"additive"``:
        every condition is shifted by the sum of its tokens' shifts, so the flow also learns
        the interactions of the combinations seen in training (the default for backbones
        over time, where shifts are measured per time point). ``"none"``: the flow carries
        control cells the whole way (the default with ``source="noise"``).
    token_embedding
        How perturbation tokens are embedded: ``"learned"`` (a vector per token seen in
        training), ``"expression"`` (the perturbed gene's co-expression profile in control
        cells: every measured gene can be embedded, so unseen perturbations of measured
        genes can be predicted) or a :class:`pandas.DataFrame` indexed by perturbation
        name (protein language model vectors, fingerprints, ...).
    cond_dim
        Size of the condition vector.
    pooling
        Pooling of the perturbation set: ``"sum"`` (default: the condition of ``A+B`` is
        the sum of the token embeddings, an additive prior that generalises to unseen
        combinations of seen perturbations), ``"mean"`` or ``"attention"``.
    backbone_kwargs
        Options of the backbone (e.g. ``hidden_dim``, ``n_blocks`` for ``"mlp"``).
    vae_hidden, vae_layers
        Width and depth of the VAE's encoder and decoder. A larger VAE reconstructs cells
        better but can make its latent space less linear, which hurts latent arithmetic and
        the flow on unseen combinations.
    vae_kl_weight
        Weight of the VAE's KL term after warm-up (scvi-tools' ``max_kl_weight``). Below 1
        the VAE keeps more of weak perturbation effects and its latent is less regular. Choose
        it on training cells: :func:`cellflow.evaluation.score_reconstruction` after
        :meth:`train_vae` scores how much of each condition's effect the VAE keeps.
    seed
        Seed for initialisation and training.

    Examples
    --------
    >>> import cellflow as cf
    >>> adata = cf.datasets.simulate_perturbseq(seed=0)
    >>> cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    >>> model = cf.CellFlow(adata, backbone="mlp", latent_dim=32)
    >>> model.train()  # doctest: +SKIP
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        backbone: str | type = "mlp",
        latent_dim: int = 32,
        likelihood: str = "nb",
        batch_key: str | None = None,
        source: str = "control",
        source_shift: str | None = None,
        token_embedding: str | pd.DataFrame = "learned",
        cond_dim: int = 128,
        pooling: str = "sum",
        backbone_kwargs: dict | None = None,
        vae_hidden: int = 128,
        vae_layers: int = 1,
        vae_kl_weight: float = 1.0,
        seed: int = 0,
    ) -> None:
        setup = get_setup(adata)
        table = token_embedding if isinstance(token_embedding, pd.DataFrame) else None
        name = backbone_name(backbone)
        over_time = get_backbone(name).over_time
        if over_time and setup.time_key is None:
            raise ValueError(
                f"backbone={name!r} models time courses (each state is a trajectory over time points), but "
                "cf.pp.setup was called without a time_key. Call cf.pp.setup(..., time_key='time'), or choose "
                "backbone='mlp' or 'set_attention'."
            )
        default_shift = "none" if source != "control" else ("additive" if over_time else "measured")
        config = CellFlowConfig(
            backbone=name,
            backbone_kwargs=dict(backbone_kwargs or {}),
            latent_dim=latent_dim,
            likelihood=likelihood,
            batch_key=batch_key,
            source=source,
            source_shift=source_shift or default_shift,
            token_embedding="table" if table is not None else token_embedding,
            cond_dim=cond_dim,
            pooling=pooling,
            vae_hidden=vae_hidden,
            vae_layers=vae_layers,
            vae_kl_weight=vae_kl_weight,
            seed=seed,
            time_scale=time_scale(adata, setup),
        )
        check_model_inputs(adata, setup, config)
        conditions = setup_conditions(adata, setup)
        check_trainable(adata, setup, config, conditions)
        categories = {k: sorted(map(str, pd.unique(adata.obs[k].astype(str)))) for k in setup.covariate_keys}
        tokens, features = token_vocabulary(adata, setup, config, table, conditions)
        codec = ConditionCodec(tokens, categories, embedding_hint=embedding_hint(config.token_embedding))
        codec.check_tokens(conditions)
        if over_time:
            build_training_design(adata, setup, codec, conditions, over_time=True)  # every time point measured?
        module = build_flow_module(config, setup, len(codec.tokens), [len(v) for v in categories.values()], features)
        self._set_parts(config, setup, codec, module, genes=list(map(str, adata.var_names)))
        self.token_features_shape = None if features is None else list(np.shape(features))
        self.dose_range = dose_range(conditions)
        self.adata, self._conditions = adata, conditions

    def _set_parts(self, config, setup, codec, module: FlowModule, *, genes) -> None:
        """The parts every model has, trained or not (shared by ``__init__`` and :meth:`load`)."""
        self.config, self.setup, self.codec, self.genes, self.module = config, setup, codec, genes, module
        self.vae: LatentVAE | None = None
        self.batch_categories: list[str] = []
        self.history: dict = {}  # a log of the training runs (times, losses); inference never reads it
        self.flow_config: FlowTrainingConfig | None = None  # the flow's last training options
        self.adata = None
        self._conditions = None
        self._cells: EncodedCells | None = None

    def attach(self, adata: AnnData) -> CellFlow:
        """Use ``adata`` as the training data (at construction, or after :meth:`load` to continue training).

        The data must be registered with :func:`cellflow.pp.setup` as the model's were and hold
        the model's genes in its order.
        """
        if [str(g) for g in adata.var_names] != list(self.genes):
            raise ValueError("adata must hold the model's genes in the model's order (model.genes).")
        setup = get_setup(adata)
        if setup != self.setup:  # the registration (keys, control, layer, ...), not the conditions present
            raise ValueError(f"adata is registered differently ({setup}) from the model's data ({self.setup}).")
        conditions = setup_conditions(adata, setup)
        check_trainable(adata, setup, self.config, conditions)
        self.codec.check_tokens(conditions)
        self.adata, self._conditions, self._cells = adata, conditions, None
        return self

    # ------------------------------------------------------------------ training
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
    ) -> CellFlow:
        """Train the VAE (scvi-tools), encode every cell once, train the flow (Lightning), then reflow it.

        Every option is checked before the VAE starts, so a bad one costs no training time.

        Parameters
        ----------
        vae_epochs
            Epochs of the VAE (default: about 8,000 gradient steps; see
            :class:`~cellflow.train.VAETrainingConfig`).
        flow_steps
            Gradient steps of the flow (:class:`~cellflow.train.FlowTrainingConfig`).
        lr
            Learning rate of the flow.
        reflow_rounds
            Rounds of :meth:`reflow` after the flow (0: none; default 1). Reflow straightens
            the flow so that a few Euler steps generate what many solver steps did.
        accelerator, devices
            Passed to Lightning (``"cpu"``, ``"gpu"``, ``"auto"``; device count).
        progress_bar
            Show progress bars.
        vae_kwargs, flow_kwargs, reflow_kwargs
            Other options of :class:`~cellflow.train.VAETrainingConfig`,
            :class:`~cellflow.train.FlowTrainingConfig` (minibatch shape, coupling, condition
            dropout, early stopping, precision, ...) and :class:`~cellflow.train.ReflowConfig`.
        trainer_kwargs
            Extra arguments of Lightning's ``Trainer`` for the flow and reflow.
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
        vae = VAETrainingConfig.from_kwargs({**(vae_kwargs or {}), **_given(epochs=vae_epochs)})
        flow = FlowTrainingConfig.from_kwargs({**(flow_kwargs or {}), **_given(steps=flow_steps, lr=lr)})
        again = ReflowConfig.from_kwargs({**(reflow_kwargs or {}), **_given(rounds=reflow_rounds)})
        flow = resolve_coupling(flow, self.module)
        self._require_data()
        check_validation_split(len({c for c in self._conditions if not c.is_control}), flow.validation_fraction)
        hardware = {"accelerator": accelerator, "devices": devices, "progress_bar": progress_bar}
        folder = None if checkpoint_dir is None else Path(checkpoint_dir)
        train_in_stages(self, folder, vae, flow, again, hardware=hardware, trainer_kwargs=trainer_kwargs)
        return self

    def train_vae(
        self, *, accelerator: str = "auto", devices: int | str = "auto", progress_bar: bool = True, **options
    ) -> CellFlow:
        """Train the VAE (scvi-tools) and encode every training cell once (first half of :meth:`train`).

        Parameters
        ----------
        accelerator, devices, progress_bar
            As in :meth:`train`.
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
            )
            self._use_latent_space(vae, categories)
            self._encoded_cells()
        self.history["vae_seconds"] = time.perf_counter() - start
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
    ) -> CellFlow:
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
        )
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
        ):
            self.history.pop(key, None)  # left by an earlier run
        self.history |= {
            "flow_seconds": time.perf_counter() - start,
            "flow_final_loss": fit["final_loss"],
            "flow_steps": fit["steps"],
        }
        if validation_groups is not None:
            self.history |= {
                "validation_conditions": validation_conditions,
                "flow_best_step": fit["best_step"],
                "flow_best_val_loss": fit["best_val_loss"],
            }

    def reflow(
        self,
        *,
        accelerator: str = "auto",
        devices: int | str = "auto",
        progress_bar: bool = True,
        trainer_kwargs: dict | None = None,
        **options,
    ) -> CellFlow:
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
            loss = reflow(
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
        self.history["reflow_final_loss"] = loss
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

    def use_vae(self, other: CellFlow) -> CellFlow:
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

    # ------------------------------------------------------------------ state
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
            self.module.restore({**snapshot, "shifts": None, "reference": None, "sampling": SamplingInfo()})
            self.flow_config = None
        self.vae, self.batch_categories, self._cells = vae, list(batch_categories), cells

    @property
    def is_trained(self) -> bool:
        """Whether the VAE and the flow have been trained (or loaded)."""
        return self.vae is not None and self.module.reference is not None

    @property
    def time_points(self) -> list[float]:
        """The training time points (sorted) of a model set up with a ``time_key``; empty before training.

        A backbone over time (``mamba``) predicts whole trajectories through exactly these points.
        """
        return [] if self.module.reference is None else self.module.reference.time_points

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise RuntimeError("The model is not trained yet. Call model.train() (or CellFlow.load a saved one).")

    def _require_data(self):
        if self.adata is None:
            raise RuntimeError(
                "This model has no training data: it was loaded without it. Load it with "
                "cf.CellFlow.load(path, adata=training_data) to train it further or reflow it."
            )
        return self.adata

    def _encoded_cells(self) -> EncodedCells:
        """Latents, batches and library sizes of the training cells (encoded once by the VAE)."""
        if self._cells is None:
            adata = self._require_data()
            self._cells = encode_cells(self.vae, adata, self.setup, self.config.batch_key, self.batch_categories)
        return self._cells

    def _design(self):
        # A trained model's shifts and control reference are indexed by its own context codes.
        reference = self.module.reference
        return build_training_design(
            self.adata,
            self.setup,
            self.codec,
            self._conditions,
            over_time=self.module.over_time,
            contexts=None if reference is None else reference.contexts,
        )

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Save weights (safetensors) and configuration (JSON) to the directory ``path``.

        Loading never unpickles anything: see :meth:`load`.
        """
        self._require_trained()
        save_model(self, Path(path), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, adata: AnnData | None = None) -> CellFlow:
        """Load a model saved by :meth:`save` (safetensors + JSON; no pickle).

        Parameters
        ----------
        path
            Directory written by :meth:`save`.
        adata
            The training data (registered as before), to train the flow further or reflow
            it; not needed to generate.
        """
        model = load_model(cls, Path(path))
        return model if adata is None else model.attach(adata)

    def __repr__(self) -> str:
        state = "trained" if self.is_trained else "untrained"
        return (
            f"CellFlow({state}, backbone={self.config.backbone!r}, latent_dim={self.config.latent_dim}, "
            f"likelihood={self.config.likelihood!r}, source={self.config.source!r}, "
            f"{len(self.genes)} genes, {len(self.codec.tokens)} tokens, covariates={self.codec.covariate_keys})"
        )


def _given(**options) -> dict:
    """The options that were given (not ``None``)."""
    return {k: v for k, v in options.items() if v is not None}
