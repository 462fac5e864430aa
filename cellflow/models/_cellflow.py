"""``cf.CellFlow``: the user-facing model (AnnData in, AnnData out)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ..data._codec import ConditionCodec
from ..data._setup import SetupConfig, get_setup, setup_conditions
from ._config import CellFlowConfig
from ._embeddings import expression_features, table_features
from ._reference import ControlReference
from ._token_shift import TokenShifts

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("cellflow")

FORMAT_VERSION = 1
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")  # flow training arithmetic (Lightning names)
CONFIG_FILE, WEIGHTS_FILE = "config.json", "weights.safetensors"


class CellFlow:
    """Predict perturbed cells with a rectified flow in an scvi-tools latent space.

    A VAE (scvi-tools) encodes counts into a latent space. A rectified flow, conditioned on
    an embedding of the perturbation set and the covariates, carries control cells of the
    same context (or noise) to perturbed cells there. The decoder maps the predicted
    latents back to counts.

    Parameters
    ----------
    adata
        Training data, registered with :func:`cellflow.pp.setup`.
    backbone
        Velocity network: a registered name (``"mlp"``, ``"set_attention"``, ``"mamba"``) or a
        :class:`~cellflow.models.backbones.Backbone` subclass registered by the user. ``"mlp"``
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
        Where the flow starts, relative to latent arithmetic (scGen-style mean shifts in the
        VAE latent; the flow runs in coordinates relative to the shift and the shift is added
        back after it). ``"measured"`` (default with ``source="control"``): a condition
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
        Width and depth of the VAE's encoder and decoder. A larger VAE is not a better
        one here: on Norman 2019, 2 layers of 256 reconstructed real cells far better than
        the default 1 x 128 but made held-out doubles much worse, for latent arithmetic
        and for the flow alike (its latent space is less linear).
    vae_kl_weight
        Weight of the VAE's KL term after warm-up (scvi-tools' ``max_kl_weight``). Below 1
        the VAE keeps more of weak perturbation effects and its latent is less regular. Choose
        it on training cells: :func:`cellflow.benchmark.score_reconstruction` after
        :meth:`train_vae` scores how much of each condition's effect the VAE keeps
        (``benchmarks/vae_fidelity.py`` does this for several weights). On Norman 2019 0.6 kept
        the mean changes of single activations far better than 1; on Papalexi 2021 it kept them
        slightly better but their distributions worse, so the default stays at 1.
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
        from .backbones import get_backbone

        setup = get_setup(adata)
        table = token_embedding if isinstance(token_embedding, pd.DataFrame) else None
        backbone_name = backbone if isinstance(backbone, str) else _registered_name(backbone)
        over_time = get_backbone(backbone_name).sequence_over_time  # fail now on an unknown name, not after the VAE
        if over_time and setup.time_key is None:
            raise ValueError(
                f"backbone={backbone_name!r} models time courses (each state is a trajectory over time points), but "
                "cf.pp.setup was called without a time_key. Call cf.pp.setup(..., time_key='time'), or choose "
                "backbone='mlp' or 'set_attention'."
            )
        config = CellFlowConfig(
            backbone=backbone_name,
            backbone_kwargs=dict(backbone_kwargs or {}),
            latent_dim=latent_dim,
            likelihood=likelihood,
            batch_key=batch_key,
            source=source,
            source_shift=source_shift or _default_source_shift(source, over_time),
            token_embedding="table" if table is not None else token_embedding,
            cond_dim=cond_dim,
            pooling=pooling,
            vae_hidden=vae_hidden,
            vae_layers=vae_layers,
            vae_kl_weight=vae_kl_weight,
            seed=seed,
            time_scale=_time_scale(adata, setup),
        )
        _check_model_inputs(adata, setup, config)
        conditions = setup_conditions(adata, setup)
        categories = {k: sorted(map(str, pd.unique(adata.obs[k].astype(str)))) for k in setup.covariate_keys}
        tokens, features = _token_vocabulary(adata, setup, config, table, conditions)
        codec = ConditionCodec(tokens, categories, embedding_hint=_embedding_hint(config.token_embedding))
        codec.check_tokens(conditions)
        if over_time:
            from ..train import build_training_design

            build_training_design(adata, setup, codec, conditions, over_time=True)  # every time point measured?
        self._init_parts(config, setup, codec, genes=list(map(str, adata.var_names)), token_features=features)
        self.adata = adata
        self._conditions = conditions

    def _init_parts(self, config, setup, codec, *, genes, token_features) -> None:
        """Build the networks (shared by ``__init__`` and :meth:`load`)."""
        from ..nn import ConditionEncoder, TokenEmbedding
        from .backbones import get_backbone

        self.config, self.setup, self.codec, self.genes = config, setup, codec, genes
        torch.manual_seed(config.seed)
        if token_features is None:
            tokens = TokenEmbedding.learned(max(1, len(codec.tokens)), config.cond_dim)
        else:
            tokens = TokenEmbedding.from_features(torch.as_tensor(token_features, dtype=torch.float32), config.cond_dim)
        self.encoder = ConditionEncoder(
            tokens,
            config.cond_dim,
            covariate_cardinalities=[len(v) for v in codec.covariate_categories.values()],
            # A backbone over time reads the time points as its sequence, not from the condition.
            use_time=setup.time_key is not None and not get_backbone(config.backbone).sequence_over_time,
            pooling=config.pooling,
            time_scale=config.time_scale,
        )
        self.backbone = get_backbone(config.backbone)(config.latent_dim, config.cond_dim, **config.backbone_kwargs)
        self.token_features_shape = None if token_features is None else list(np.shape(token_features))
        self.vae = None
        self.reference: ControlReference | None = None
        self.token_shift: TokenShifts | None = None
        self.history: dict[str, float] = {}
        self.batch_categories: list[str] = []
        self._latent = None

    # ------------------------------------------------------------------ training
    def train(
        self,
        *,
        vae_epochs: int | None = None,
        flow_steps: int = 2000,
        vae_batch_size: int = 128,
        groups_per_batch: int = 2,
        cells_per_group: int = 128,
        lr: float = 1e-3,
        coupling: str = "ot",
        condition_dropout: float = 0.2,
        validation_fraction: float = 0.0,
        patience: int = 5,
        validation_every: int = 100,
        reflow_rounds: int = 1,
        reflow_steps: int | None = None,
        precision: str = "32-true",
        accelerator: str = "auto",
        devices: int | str = "auto",
        progress_bar: bool = True,
    ) -> CellFlow:
        """Train the VAE (scvi-tools), encode every cell once, train the flow (Lightning), then reflow it.

        Parameters
        ----------
        vae_epochs
            Epochs of the VAE; by default about 8,000 gradient steps (at least 50 and at
            most 400 epochs), the regime in which scvi-tools' VAE reconstructs sparse
            Perturb-seq counts well (fewer steps leave the decoder spreading counts over too
            many genes, which no flow can repair).
        flow_steps
            Gradient steps of the flow.
        vae_batch_size
            Minibatch size of the VAE (scvi-tools' default, 128).
        groups_per_batch, cells_per_group
            A flow minibatch holds ``groups_per_batch`` conditions (in their contexts) with
            ``cells_per_group`` target cells each, with their control-cell partners. With
            ``coupling="minibatch_ot"``, few groups of many cells: exact OT on 128 cells per
            condition couples far better than on 32 (on Norman 2019, 2 x 128 cut the held-out
            energy distance from 8.3 to 7.3 at the same cost per step). For a
            backbone over time: ``cells_per_group`` trajectories per condition (cells drawn at
            every time point and chained by optimal transport), paired with as many control
            trajectories, so a step sees ``T`` times as many cells.
        lr
            Learning rate of the flow.
        coupling
            ``"ot"`` (default): every cell of a condition is paired once, by an exact
            optimal-transport assignment over the whole populations, with a control cell of its
            context, and keeps that partner for the whole run (large conditions are paired in
            blocks of 1,024). ``"minibatch_ot"``: the cells of each minibatch are re-paired by
            exact OT at every step. ``"random"``: independent pairs. Re-pairing per minibatch
            averages each control cell's changing partners, which contracted the generated cells
            towards their mean on Norman 2019 (they kept 25-31% of the real within-condition
            latent variance; with fixed pairs 71-73% on the training conditions and 81-89% on
            the held-out doubles) and cost the held-out doubles much of their accuracy
            (``benchmarks/flow_spread.py``).
            With ``source="noise"`` and for a backbone over time, ``"ot"`` pairs per minibatch.
        condition_dropout
            Probability of replacing a condition by the null condition, which learns the
            flow of an average condition: it enables classifier-free guidance at generation
            (``cf.tl.generate(..., guidance=w)``) and regularises the condition's influence.
        validation_fraction
            Share of the perturbed conditions (all their contexts and time points) left out of
            the flow's training as a validation split; 0 (the default) trains on all of them
            for ``flow_steps``. With a split, the flow-matching loss on fixed minibatches of
            the validation conditions is computed every ``validation_every`` steps, training
            stops after ``patience`` checks without improvement, and the best weights are kept
            (``history["flow_best_step"]``). ``flow_steps`` is then the most it trains.
        patience, validation_every
            Early stopping: checks without improvement before stopping; steps between checks.
        reflow_rounds
            Rounds of :meth:`reflow` after the flow (0: none). A minibatch-OT flow is curved
            enough that a few solver steps land short of where its own ODE goes; one round
            straightens it (see the benchmark reports for the measured effect).
        reflow_steps
            Gradient steps per reflow round (default: half of ``flow_steps``).
        precision
            Arithmetic of the flow's training (and reflow), Lightning's names: ``"32-true"``
            (default), ``"bf16-mixed"`` or ``"16-mixed"`` (autocast; pairing and the loss stay
            in float32, and so does the VAE). Measured with ``benchmarks/speed.py``: it does
            not pay for the default networks (on an H100 a step of the mlp backbone takes
            ~6 ms at 256 to 8,192 cells, bound by kernel launches, and bf16 autocast made it
            slower; on a CPU without bf16 matrix units it is ~15x slower); it is for much
            wider backbones on a GPU.
        accelerator, devices
            Passed to Lightning (``"cpu"``, ``"gpu"``, ``"auto"``; device count).
        progress_bar
            Show progress bars.

        Returns
        -------
        The model itself, trained.
        """
        from ..train._validation import check_validation_split

        # Check the flow's options now: a bad one must not surface after minutes of VAE training.
        _check_flow_options(
            steps=flow_steps,
            coupling=coupling,
            condition_dropout=condition_dropout,
            validation_fraction=validation_fraction,
            patience=patience,
            validation_every=validation_every,
            precision=precision,
        )
        check_validation_split(len({c for c in self._conditions if not c.is_control}), validation_fraction)
        if reflow_steps is None:
            reflow_steps = max(1, flow_steps // 2)
        if reflow_rounds < 0 or reflow_steps < 1:
            raise ValueError(
                f"reflow_rounds={reflow_rounds} must be at least 0 and reflow_steps={reflow_steps} at least 1."
            )
        self.train_vae(
            epochs=vae_epochs,
            batch_size=vae_batch_size,
            accelerator=accelerator,
            devices=devices,
            progress_bar=progress_bar,
        )
        self.train_flow(
            steps=flow_steps,
            groups_per_batch=groups_per_batch,
            cells_per_group=cells_per_group,
            lr=lr,
            coupling=coupling,
            condition_dropout=condition_dropout,
            validation_fraction=validation_fraction,
            patience=patience,
            validation_every=validation_every,
            precision=precision,
            accelerator=accelerator,
            devices=devices,
            progress_bar=progress_bar,
        )
        if reflow_rounds:
            self.reflow(
                rounds=reflow_rounds,
                steps=reflow_steps,
                accelerator=accelerator,
                devices=devices,
                progress_bar=progress_bar,
            )
        return self

    def train_vae(
        self,
        *,
        epochs: int | None = None,
        batch_size: int = 128,
        accelerator: str = "auto",
        devices: int | str = "auto",
        progress_bar: bool = True,
    ) -> CellFlow:
        """Train the VAE (scvi-tools) and encode every training cell once (first half of :meth:`train`).

        Parameters are those of :meth:`train` (``vae_epochs``, ``vae_batch_size``, ...).
        """
        import lightning.pytorch as pl

        from ..train._quiet import quiet_lightning
        from .vae import LatentVAE, VAEConfig

        if self.adata is None:
            raise RuntimeError("This model was loaded without training data; it can generate but not train.")
        adata, setup, cfg = self.adata, self.setup, self.config
        pl.seed_everything(cfg.seed, verbose=False)
        matrix = adata.layers[setup.layer] if setup.layer else adata.X
        batch = None
        if cfg.batch_key is not None:
            categorical = pd.Categorical(adata.obs[cfg.batch_key].astype(str))
            self.batch_categories = list(categorical.categories)
            batch = categorical.codes.astype(np.int64)
        start = time.perf_counter()
        if epochs is None:
            epochs = int(np.clip(round(8000 * batch_size / max(1, adata.n_obs)), 50, 400))
        vae_config = VAEConfig(
            n_input=adata.n_vars,
            n_latent=cfg.latent_dim,
            n_hidden=cfg.vae_hidden,
            n_layers=cfg.vae_layers,
            gene_likelihood=cfg.likelihood,
        )
        with quiet_lightning():
            self.vae = LatentVAE.fit(
                matrix,
                batch=batch,
                config=vae_config,
                max_epochs=epochs,
                batch_size=batch_size,
                accelerator=accelerator,
                devices=devices,
                progress_bar=progress_bar,
                kl_weight=cfg.vae_kl_weight,
                seed=cfg.seed,
            )
        self._latent = self.vae.encode(matrix, batch)
        self._batch = batch
        self._log_library = np.log(np.maximum(np.asarray(matrix.sum(axis=1)).ravel(), 1.0))
        self.history["vae_seconds"] = time.perf_counter() - start
        return self

    def train_flow(
        self,
        *,
        steps: int = 2000,
        groups_per_batch: int = 2,
        cells_per_group: int = 128,
        lr: float = 1e-3,
        coupling: str = "ot",
        condition_dropout: float = 0.2,
        validation_fraction: float = 0.0,
        patience: int = 5,
        validation_every: int = 100,
        precision: str = "32-true",
        accelerator: str = "auto",
        devices: int | str = "auto",
        progress_bar: bool = True,
    ) -> CellFlow:
        """Train the flow on the latents of :meth:`train_vae` (second half of :meth:`train`).

        Calling it again retrains the flow from its current weights with the same VAE.
        Parameters are those of :meth:`train` (``flow_steps``, ...).
        """
        import lightning.pytorch as pl

        from ..train import FlowModule, FlowTrainingConfig, GroupIndex, build_training_design, fit_flow_module
        from ..train._validation import EarlyStopping, split_validation_conditions

        _check_flow_options(
            steps=steps,
            coupling=coupling,
            condition_dropout=condition_dropout,
            validation_fraction=validation_fraction,
            patience=patience,
            validation_every=validation_every,
            precision=precision,
        )
        if getattr(self, "_latent", None) is None:
            raise RuntimeError("Train the VAE first: model.train_vae() (or model.train() for both).")
        adata, setup, cfg = self.adata, self.setup, self.config
        pl.seed_everything(cfg.seed, verbose=False)
        latent, batch, log_library = self._latent, self._batch, self._log_library
        start = time.perf_counter()
        over_time = self.backbone.sequence_over_time
        design = build_training_design(adata, setup, self.codec, self._conditions, over_time=over_time)
        control = design.is_control
        self.reference = ControlReference.from_cells(
            latent[control],
            log_library[control],
            np.zeros(control.sum(), dtype=np.int64) if batch is None else batch[control],
            design.context[control],
            design.contexts,
            time=design.time[control] if setup.time_key is not None else None,
        )
        missing = sorted(set(design.group_context.tolist()) - set(design.context[control].tolist()))
        if cfg.source == "control" and missing:
            names = [dict(zip(setup.covariate_keys, design.contexts[i])) for i in missing]
            raise ValueError(f"No control cells in context(s) {names}; they are needed as the flow's source.")
        n_groups = len(design.group_context)
        train_config = FlowTrainingConfig(
            max_steps=steps,
            groups_per_batch=groups_per_batch,
            cells_per_group=cells_per_group,
            lr=lr,
            coupling=coupling,
            condition_dropout=condition_dropout,
            seed=cfg.seed,
            precision=precision,
        )
        if over_time:
            module, index = self._trajectory_module(design, latent, train_config)
        else:
            group_shift = None
            if cfg.source_shift != "none":
                self.token_shift = TokenShifts.from_cells(
                    latent,
                    self._conditions,
                    design.context,
                    len(design.contexts),
                    self.codec.tokens,
                    mode=cfg.source_shift,
                )
                table = design.table
                group_shift = self.token_shift(
                    table.token_ids, table.doses, table.mask, torch.as_tensor(design.group_context)
                )
            index = GroupIndex.build(design.group, design.context, design.is_control, n_groups, len(design.contexts))
            latent_tensor = torch.as_tensor(latent, dtype=torch.float32)
            partners = None
            if coupling == "ot" and cfg.source == "control":
                partners = index.population_partners(latent_tensor, group_shift, seed=cfg.seed)
            module = FlowModule(
                self.encoder,
                self.backbone,
                groups=design.table,
                latent=latent_tensor,
                source=cfg.source,
                source_shift=group_shift,
                source_partner=partners,
                config=train_config,
            )
        validation_groups = None
        if validation_fraction > 0:
            held = split_validation_conditions(
                design.group_condition, design.group_is_control, validation_fraction, cfg.seed
            )
            validation_groups = torch.as_tensor(np.flatnonzero(held))
            cells = np.flatnonzero(held[design.group])
            validation_conditions = sorted({self._conditions[i].label(setup.control, setup.combo_sep) for i in cells})
        fit = fit_flow_module(
            module,
            index,
            n_groups,
            train_config,
            validation_groups=validation_groups,
            early_stopping=EarlyStopping(patience=patience, every=validation_every),
            accelerator=accelerator,
            devices=devices,
            progress_bar=progress_bar,
        )
        self._flow_state = (module, index, train_config)  # what reflow starts from
        self.history["flow_seconds"] = time.perf_counter() - start
        self.history["flow_final_loss"] = fit["final_loss"]
        self.history["flow_steps"] = fit["steps"]
        self.history["flow_max_steps"] = steps
        self.history["validation_fraction"] = validation_fraction
        for key in ("flow_best_step", "flow_best_val_loss", "validation_conditions"):
            self.history.pop(key, None)  # left by an earlier train_flow
        if validation_groups is not None:
            self.history["validation_conditions"] = validation_conditions
            self.history["flow_best_step"] = fit["best_step"]
            self.history["flow_best_val_loss"] = fit["best_val_loss"]
        self.history["condition_dropout"] = condition_dropout
        self.history["reflow_rounds"] = 0
        self.history["distill_steps"] = 0
        return self

    def _trajectory_module(self, design, latent: np.ndarray, config):
        """Index and Lightning module of the flow over time courses (backbones with ``sequence_over_time``)."""
        from ..train import TrajectoryFlowModule, TrajectoryIndex, time_resolved_shifts

        n_groups, n_times, n_contexts = len(design.group_context), len(design.time_points), len(design.contexts)
        if self.config.source_shift not in ("additive", "none"):
            raise ValueError(
                f"source_shift={self.config.source_shift!r} is not supported with a backbone over time; "
                "use 'additive' (shifts measured per time point) or 'none'."
            )
        group_shift = None
        if self.config.source_shift == "additive":
            self.token_shift = time_resolved_shifts(
                latent, self._conditions, design.context, design.time_code, n_contexts, n_times, self.codec.tokens
            )
            table = design.table
            rows = torch.as_tensor(design.group_context)[:, None] * n_times + torch.arange(n_times)  # (G, T)
            per_row = [x.repeat_interleave(n_times, dim=0) for x in (table.token_ids, table.doses, table.mask)]
            group_shift = self.token_shift(*per_row, rows.reshape(-1)).view(n_groups, n_times, -1)
        index = TrajectoryIndex.build(
            design.group, design.time_code, design.context, design.is_control, n_groups, n_times, n_contexts
        )
        module = TrajectoryFlowModule(
            self.encoder,
            self.backbone,
            time_points=self._backbone_times(design.time_points),
            groups=design.table,
            latent=torch.as_tensor(latent, dtype=torch.float32),
            source=self.config.source,
            source_shift=group_shift,
            config=config,
        )
        return module, index

    @property
    def time_points(self) -> list[float]:
        """The training time points (sorted) of a model set up with a ``time_key``; empty before training.

        A backbone over time (``mamba``) predicts whole trajectories through exactly these points.
        """
        return [] if self.reference is None else self.reference.time_points

    def _backbone_times(self, time_points=None) -> torch.Tensor:
        # The backbone embeds time points scaled to about [0, 1] (the latest training time is 1).
        points = self.time_points if time_points is None else time_points
        return torch.as_tensor(np.asarray(points, dtype=np.float32)) * (self.config.time_scale / 1000.0)

    def use_vae(self, other: CellFlow) -> CellFlow:
        """Take over the trained VAE of ``other`` (trained on the same cells) instead of training one.

        Several backbones or flow settings can then be compared on one autoencoder, and the VAE
        is trained once. Call :meth:`train_flow` next.

        Parameters
        ----------
        other
            A model whose :meth:`train_vae` ran in this session on data with the same cells and
            genes as this model's.

        Returns
        -------
        The model itself.
        """
        if getattr(other, "_latent", None) is None:
            raise ValueError("use_vae needs a model whose VAE was trained in this session (other.train_vae()).")
        if self.adata is None or other.adata is None:
            raise ValueError("use_vae needs both models built on training data (not loaded from disk).")
        same = self.adata.n_obs == other.adata.n_obs and list(self.adata.obs_names) == list(other.adata.obs_names)
        if not same or self.genes != other.genes:
            raise ValueError("use_vae needs a model trained on the same cells and genes as this one.")
        if (self.config.latent_dim, self.config.batch_key) != (other.config.latent_dim, other.config.batch_key):
            raise ValueError(
                f"use_vae needs the same latent_dim and batch_key; got {self.config.latent_dim}, "
                f"{self.config.batch_key!r} here and {other.config.latent_dim}, {other.config.batch_key!r} there."
            )
        self.vae, self.batch_categories = other.vae, list(other.batch_categories)
        self._latent, self._batch, self._log_library = other._latent, other._batch, other._log_library
        self.history["vae_seconds"] = other.history.get("vae_seconds", float("nan"))
        return self

    def reflow(
        self,
        *,
        rounds: int = 1,
        steps: int = 1000,
        pairs_per_group: int = 256,
        method: str = "heun",
        ode_steps: int = 16,
        distill_steps: int | None = None,
        lr: float = 5e-4,
        accelerator: str = "auto",
        devices: int | str = "auto",
        progress_bar: bool = True,
    ) -> CellFlow:
        """Straighten the trained flow so that few solver steps suffice (reflow, then distillation).

        Each round draws ``pairs_per_group`` fresh source cells for every training group,
        carries them with the current flow's ODE, and trains the flow further on these fixed
        (source, end point) pairs (Liu et al. 2023, "Flow straight and fast"). Straighter
        paths lose less to coarse Euler steps. For a backbone over time, a pair is a whole
        trajectory: a chained control trajectory and where the flow carried it.

        Parameters
        ----------
        rounds
            Reflow rounds (``k`` in ``k``-rectified flow).
        steps
            Gradient steps per round.
        pairs_per_group
            Pairs (cells, or trajectories for a backbone over time) drawn per training group and round.
        method, ode_steps
            Solver that produces the pairs (accurate: the pairs are the new targets).
        distill_steps
            With ``k``, the last round trains the velocity only at the flow times of a
            ``k``-step Euler solve (``0, 1/k, ...``), so ``cf.tl.generate(method="euler",
            steps=k)`` lands on the paired end points (distillation).
        lr
            Learning rate (continuing from the trained weights).
        accelerator, devices, progress_bar
            As in :meth:`train`.

        Returns
        -------
        The model itself.
        """
        from ..train import FlowTrainingConfig, GroupIndex, TrajectoryFlowModule, fit_flow_module, flow_pairs

        if rounds < 1 or steps < 1 or pairs_per_group < 1 or ode_steps < 1:
            raise ValueError(
                f"rounds, steps, pairs_per_group and ode_steps must be at least 1, got {rounds=}, {steps=}, "
                f"{pairs_per_group=}, {ode_steps=}."
            )
        if distill_steps is not None and distill_steps < 1:
            raise ValueError(f"distill_steps={distill_steps} must be at least 1 (or None).")
        if getattr(self, "_flow_state", None) is None:
            raise RuntimeError("reflow needs a flow trained in this session: call model.train() first.")
        module, index, config = self._flow_state
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(self.config.seed + 1)
        for round_ in range(rounds):
            last = round_ == rounds - 1
            module.cpu().eval()
            z0, z1, group = flow_pairs(
                module, index, pairs_per_group=pairs_per_group, method=method, steps=ode_steps, generator=generator
            )
            n_groups = len(index.group_context)
            # Every pair (a cell, or a whole trajectory over time) is one row; sources are fixed, not drawn.
            pair_index = GroupIndex.build(
                group,
                index.group_context[group].numpy(),
                np.ones(len(group), dtype=bool),
                n_groups,
                len(self.reference.contexts),
            )
            round_config = FlowTrainingConfig(
                **{
                    **vars(config),
                    "max_steps": steps,
                    "lr": lr,
                    "seed": config.seed + 1 + round_,
                    "distill_steps": distill_steps if last else None,
                }
            )
            round_module = type(module)(
                module.encoder,
                module.backbone,
                groups=_group_table(module),
                latent=z1,
                source=module.source,
                pair_source=z0,
                config=round_config,
                **({"time_points": module.time_points} if isinstance(module, TrajectoryFlowModule) else {}),
            )
            self.history["reflow_final_loss"] = fit_flow_module(
                round_module,
                pair_index,
                n_groups,
                round_config,
                accelerator=accelerator,
                devices=devices,
                progress_bar=progress_bar,
            )["final_loss"]
        self.history["reflow_rounds"] = self.history.get("reflow_rounds", 0) + rounds
        self.history["distill_steps"] = distill_steps or 0
        self.history["reflow_seconds"] = time.perf_counter() - start
        return self

    @property
    def is_trained(self) -> bool:
        """Whether the VAE and the flow have been trained (or loaded)."""
        return self.vae is not None and self.reference is not None

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise RuntimeError("The model is not trained yet. Call model.train() (or CellFlow.load a saved one).")

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Save weights (safetensors) and configuration (JSON) to the directory ``path``.

        Loading never unpickles anything: see :meth:`load`.
        """
        from safetensors.torch import save_file

        self._require_trained()
        path = Path(path)
        if (path / CONFIG_FILE).exists() and not overwrite:
            raise FileExistsError(f"{path} already holds a model; pass overwrite=True to replace it.")
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"vae.{k}": v for k, v in self.vae.state_dict().items()}
        tensors |= {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()}
        tensors |= {f"backbone.{k}": v.detach().cpu().contiguous() for k, v in self.backbone.state_dict().items()}
        tensors |= {f"reference.{k}": v for k, v in self.reference.tensors().items()}
        if self.token_shift is not None:
            tensors |= {f"shift.{k}": v for k, v in self.token_shift.tensors().items()}
        save_file(tensors, str(path / WEIGHTS_FILE))
        meta = {
            "format": "cellflow",
            "format_version": FORMAT_VERSION,
            "model": asdict(self.config),
            "setup": self.setup.to_uns(),
            "vae": self.vae.config_dict(),
            "tokens": self.codec.tokens,
            "covariate_categories": self.codec.covariate_categories,
            "genes": self.genes,
            "token_features_shape": self.token_features_shape,
            "contexts": [list(c) for c in self.reference.contexts],
            "batch_categories": self.batch_categories,
            "history": self.history,
        }
        (path / CONFIG_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> CellFlow:
        """Load a model saved by :meth:`save` (safetensors + JSON; no pickle)."""
        from safetensors.torch import load_file

        from .vae import LatentVAE, VAEConfig

        path = Path(path)
        if not (path / CONFIG_FILE).exists() or not (path / WEIGHTS_FILE).exists():
            raise FileNotFoundError(
                f"{path} has no {CONFIG_FILE} and {WEIGHTS_FILE}; is it a directory saved by model.save?"
            )
        meta = json.loads((path / CONFIG_FILE).read_text())
        if meta.get("format") != "cellflow" or meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{path} holds format {meta.get('format')!r} v{meta.get('format_version')}; update cellflow."
            )
        tensors = load_file(str(path / WEIGHTS_FILE))
        parts = {
            p: {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(p + ".")}
            for p in ("vae", "encoder", "backbone", "reference", "shift")
        }
        setup = SetupConfig.from_uns(meta["setup"])
        config = CellFlowConfig(**meta["model"])
        codec = ConditionCodec(meta["tokens"], meta["covariate_categories"], _embedding_hint(config.token_embedding))
        shape = meta["token_features_shape"]
        model = cls.__new__(cls)
        model._init_parts(
            config, setup, codec, genes=meta["genes"], token_features=None if shape is None else np.zeros(shape)
        )
        model.encoder.load_state_dict(parts["encoder"], strict=True)
        model.backbone.load_state_dict(parts["backbone"], strict=True)
        model.encoder.eval(), model.backbone.eval()
        model.vae = LatentVAE.from_state_dict(parts["vae"], VAEConfig(**meta["vae"]))
        model.reference = ControlReference.from_tensors(parts["reference"], [tuple(c) for c in meta["contexts"]])
        model.token_shift = TokenShifts.from_tensors(parts["shift"]) if parts["shift"] else None
        if config.source_shift != "none" and model.token_shift is None:
            raise ValueError(f"{path} is missing the source shifts its configuration uses; the file is damaged.")
        model.history = meta.get("history", {})
        model.batch_categories = meta.get("batch_categories", [])
        model.adata, model._conditions = None, None
        return model

    def __repr__(self) -> str:
        state = "trained" if self.is_trained else "untrained"
        return (
            f"CellFlow({state}, backbone={self.config.backbone!r}, latent_dim={self.config.latent_dim}, "
            f"likelihood={self.config.likelihood!r}, source={self.config.source!r}, "
            f"{len(self.genes)} genes, {len(self.codec.tokens)} tokens, covariates={self.codec.covariate_keys})"
        )


COUPLINGS = ("ot", "minibatch_ot", "random")


def _default_source_shift(source: str, over_time: bool) -> str:
    if source != "control":
        return "none"
    return "additive" if over_time else "measured"


def _group_table(module):
    from ..train import GroupTable

    return GroupTable(**{name: getattr(module, f"group_{name}").cpu() for name in GroupTable.__dataclass_fields__})


def _check_flow_options(
    *,
    steps: int,
    coupling: str,
    condition_dropout: float,
    validation_fraction: float = 0.0,
    patience: int = 5,
    validation_every: int = 100,
    precision: str = "32-true",
) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {PRECISIONS} (Lightning's names).")
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling={coupling!r} must be one of {COUPLINGS}.")
    if steps < 1:
        raise ValueError(f"flow_steps={steps} must be at least 1.")
    if not 0.0 <= condition_dropout < 1.0:
        raise ValueError(f"condition_dropout={condition_dropout} must lie in [0, 1).")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must lie in [0, 1) (0: no early stopping).")
    if patience < 1 or validation_every < 1:
        raise ValueError(f"patience={patience} and validation_every={validation_every} must be at least 1.")


def _check_model_inputs(adata, setup: SetupConfig, config: CellFlowConfig) -> None:
    if config.likelihood in ("nb", "zinb", "poisson") and not setup.counts:
        raise ValueError(
            f"likelihood={config.likelihood!r} models raw counts, but cf.pp.setup was called with counts=False. "
            "Use likelihood='normal' for log-normalised data, or set up the raw counts."
        )
    if config.batch_key is not None and config.batch_key not in adata.obs.columns:
        raise KeyError(f"batch_key={config.batch_key!r} is not a column of adata.obs.")


def _token_vocabulary(adata, setup, config, table, conditions):
    """Tokens the model can embed and, for feature-based embeddings, their feature table."""
    seen = sorted({t for c in conditions for t in c.tokens})
    if config.token_embedding == "learned":
        return seen, None
    if config.token_embedding == "table":
        return table_features(table, required=seen)
    return expression_features(adata, setup, conditions, required=seen)


def _time_scale(adata, setup: SetupConfig) -> float:
    # Sinusoidal features resolve times in [0, 1] scaled by 1000; map the latest time point to 1.
    if setup.time_key is None:
        return 1000.0
    latest = float(np.abs(adata.obs[setup.time_key].astype(float)).max())
    return 1000.0 / latest if latest > 0 else 1000.0


def _embedding_hint(kind: str) -> str:
    return {
        "learned": "token_embedding='learned' only knows tokens seen in training; use token_embedding='expression' "
        "(for measured genes) or a DataFrame of token features that includes them.",
        "expression": "token_embedding='expression' embeds measured genes only (adata.var_names); "
        "pass a DataFrame of token features for other perturbations.",
        "table": "Add them to the token_embedding table (a DataFrame indexed by perturbation name).",
    }[kind]


def _registered_name(backbone: type) -> str:
    from .backbones._registry import _REGISTRY

    for name, cls in _REGISTRY.items():
        if cls is backbone:
            return name
    raise ValueError(f"{backbone!r} is not registered; decorate it with @register_backbone('name') first.")
