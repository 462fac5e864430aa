"""``cf.CellFlow``: the user-facing model (AnnData in, AnnData out).

The class builds the model and holds its state; the training methods come from
:class:`~cellflow.models._training.TrainingMixin`, checkpoints from ``models/_persistence.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ..backbones import get_backbone
from ..flow import FlowModule
from ..pp._codec import ConditionCodec
from ..pp._setup import get_setup, setup_conditions
from ..train import (
    FlowTrainingConfig,
    build_training_design,
)
from ..train._plan import rank_and_world_size
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
from ._cells import EncodedCells, encode_cells
from ._config import CellFlowConfig
from ._persistence import load_model, save_model
from ._presets import get_preset
from ._training import TrainingMixin

if TYPE_CHECKING:
    from anndata import AnnData

    from ..vae import LatentVAE


class CellFlow(TrainingMixin):
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
    gene_offsets
        Correct each condition's decoded expression per gene (default: ``True`` with a count
        likelihood). The decoder maps the low-dimensional latent to every gene's expected counts
        and misses part of a condition's effect on single genes; with offsets, generated cells'
        expected counts are multiplied, gene by gene, by what the training cells of the condition
        had against the decoder's means of the same cells (shrunk towards no correction by a
        prior whose strength is chosen on halves of the training cells). An unseen combination
        takes the control cells' correction plus the sum of its tokens' changes of it
        (:class:`~cellflow.flow.GeneOffsets`).
    combination_offsets
        With gene offsets, how an unseen combination's add up. ``"sum"`` (the default): the
        control cells' correction plus the sum of its tokens' changes. ``"fit"``: that sum times
        the factor (0 to 1.5) that best predicts the counts of the training combinations whose
        tokens were each measured alone, where there are at least three (else 1); recorded in
        ``history["gene_offset_combination_scale"]``. Two tokens' changes can correct one shared
        miss of the decoder twice, so a sum can overshoot; but offsets fitted at the real cells'
        latents also make up for a predicted latent that falls short, so a smaller factor can
        lose what the sum recovered. The results page measures both on real and simulated screens.
    token_embedding
        How perturbation tokens are embedded: ``"learned"`` (a vector per token seen in
        training), ``"expression"`` (the perturbed gene's co-expression profile in control
        cells: every measured gene can be embedded, so unseen perturbations of measured
        genes can be predicted) or a :class:`pandas.DataFrame` indexed by perturbation
        name (protein language model vectors, fingerprints, ...). With features, a token
        measured nowhere takes the latent shift, library shift and gene offsets that ridge
        regression on the measured tokens' predicts from its features (or their mean, where the
        features do not predict better in leave-one-out).
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
        Weight of the VAE's KL term after warm-up (scvi-tools' ``max_kl_weight``). The
        default training length ends inside the warm-up, at a fraction of this weight (see
        :meth:`cellflow.train.VAETrainingConfig.kl_warmup_for`). Below 1
        the VAE keeps more of weak perturbation effects and its latent is less regular. Choose
        it on training cells: :func:`cellflow.evaluation.score_reconstruction` after
        :meth:`train_vae` scores how much of each condition's effect the VAE keeps.
    seed
        Seed for initialisation and training.
    preset
        Size and training length together: ``"default"`` (a 128-wide ``"mlp"`` flow trained
        for 1,000 steps, no reflow, after the VAE's full length), ``"fast"`` (the same flow
        after a VAE of about 3,600 steps) or ``"long"`` (a 256-wide flow, 2,000 steps and one
        reflow round: the defaults before the quality-versus-time benchmark; generation then
        takes 4 Euler steps instead of 8 Heun steps). The results page shows what each costs
        and gives. It sets the ``"mlp"`` backbone's ``hidden_dim`` here and the defaults of
        :meth:`train`; options given explicitly win (see :data:`cellflow.models.PRESETS`). A
        loaded model trains further with ``"default"``'s lengths unless told otherwise.

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
        gene_offsets: bool | None = None,
        combination_offsets: str = "sum",
        token_embedding: str | pd.DataFrame = "learned",
        cond_dim: int = 128,
        pooling: str = "sum",
        backbone_kwargs: dict | None = None,
        vae_hidden: int = 128,
        vae_layers: int = 1,
        vae_kl_weight: float = 1.0,
        seed: int = 0,
        preset: str = "default",
    ) -> None:
        chosen = get_preset(preset)
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
        preset_options = chosen.mlp_backbone if name == "mlp" else {}
        config = CellFlowConfig(
            backbone=name,
            backbone_kwargs={**preset_options, **(backbone_kwargs or {})},
            latent_dim=latent_dim,
            likelihood=likelihood,
            batch_key=batch_key,
            source=source,
            source_shift=source_shift or default_shift,
            gene_offsets=likelihood != "normal" if gene_offsets is None else gene_offsets,
            token_embedding="table" if table is not None else token_embedding,
            cond_dim=cond_dim,
            pooling=pooling,
            vae_hidden=vae_hidden,
            vae_layers=vae_layers,
            vae_kl_weight=vae_kl_weight,
            seed=seed,
            time_scale=time_scale(adata, setup),
            combination_offsets=combination_offsets,
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
        self.preset = preset
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
        self.preset = "default"  # the training lengths train() defaults to (not saved with the model)

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

    # ------------------------------------------------------------------ state
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

        Loading never unpickles anything: see :meth:`load`. In a distributed run (Lightning's
        DDP, where every process runs the script) only the process of rank 0 writes, as with
        Lightning's ``rank_zero_only``; every rank returns once the files are complete.
        """
        self._require_trained()
        rank, world = rank_and_world_size()
        if rank == 0:
            save_model(self, Path(path), overwrite=overwrite)
        if world > 1:  # the other ranks return once the model is on disk (a load right after finds it)
            torch.distributed.barrier()

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
