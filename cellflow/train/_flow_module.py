"""The Lightning module that trains the latent rectified flow."""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch.utils.data import IterableDataset

from ..models.backbones import Backbone, EncodedCondition
from ..models.flow import LinearPath, ot_pairing_grouped, random_pairing, sample_flow_time
from ._groups import GroupIndex
from ._trajectories import chain_states


@dataclass
class GroupTable:
    """Per-group network inputs: perturbation tokens, covariates and time (``G`` rows)."""

    token_ids: torch.Tensor  # (G, K) long
    doses: torch.Tensor  # (G, K) float
    mask: torch.Tensor  # (G, K) bool
    covariates: torch.Tensor  # (G, n_cov) long
    time: torch.Tensor  # (G,) float


@dataclass
class FlowTrainingConfig:
    """Optimisation settings of the flow (saved with the model)."""

    max_steps: int = 3000
    groups_per_batch: int = 16
    cells_per_group: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    coupling: str = "ot"  # "ot" (fixed population pairs), "minibatch_ot" or "random"; ignored for reflow
    condition_dropout: float = 0.0
    distill_steps: int | None = None  # train s only on the grid of a k-step Euler solve
    seed: int = 0
    precision: str = "32-true"  # Lightning's Trainer precision, e.g. "bf16-mixed" on a GPU


class GroupBatches(IterableDataset):
    """An endless stream of minibatches: groups drawn uniformly, cells drawn within them."""

    def __init__(self, index: GroupIndex, groups: torch.Tensor, config: FlowTrainingConfig) -> None:
        super().__init__()
        self.index, self.groups, self.config = index, groups, config

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.config.seed)
        n = min(self.config.groups_per_batch, len(self.groups))
        while True:
            picked = self.groups[torch.randperm(len(self.groups), generator=generator)[:n]]
            yield self.index.sample(picked, self.config.cells_per_group, generator)


class FlowModule(pl.LightningModule):
    """Condition encoder + velocity backbone, trained by (OT-coupled) rectified flow.

    Parameters
    ----------
    encoder
        A :class:`cellflow.nn.ConditionEncoder`.
    backbone
        A velocity :class:`~cellflow.models.backbones.Backbone`.
    groups
        Network inputs of every training group.
    latent
        ``(N, D)`` latent of every cell (precomputed once by the VAE).
    source
        ``"control"`` (flow from control cells of the same context) or ``"noise"``.
    source_shift
        ``(G, D)`` latent-arithmetic shift of each group (``source_shift`` of
        :class:`~cellflow.CellFlow`), subtracted from its targets so that the flow learns what
        arithmetic misses, or ``None``.
    pair_source
        ``(N, D)`` fixed source of every row of ``latent`` (reflow: ``latent`` holds where the
        previous flow carried these sources). Rows are then neither re-paired nor shifted.
    source_partner
        ``(N,)`` fixed control-cell partner of every target cell
        (:meth:`~cellflow.train.GroupIndex.population_partners`, ``coupling="ot"``): each
        target is always paired with the same source instead of being re-paired per minibatch.
    config
        Optimisation settings.
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        backbone: Backbone,
        *,
        groups: GroupTable | None = None,
        latent: torch.Tensor | None = None,
        source: str = "control",
        source_shift: torch.Tensor | None = None,
        pair_source: torch.Tensor | None = None,
        source_partner: torch.Tensor | None = None,
        config: FlowTrainingConfig | None = None,
    ) -> None:
        super().__init__()
        self.encoder, self.backbone = encoder, backbone
        self.source, self.config = source, config or FlowTrainingConfig()
        self.path = LinearPath()
        # Training data live next to the weights (moved to the GPU with them) but are not saved.
        if groups is not None:
            for name, value in vars(groups).items():
                self.register_buffer(f"group_{name}", value, persistent=False)
        if latent is not None:
            self.register_buffer("latent", latent, persistent=False)
        self.register_buffer("source_shift", source_shift, persistent=False)
        self.register_buffer("pair_source", pair_source, persistent=False)
        self.register_buffer("source_partner", source_partner, persistent=False)

    def encode(self, token_ids, doses, mask, covariates, time, drop=None) -> EncodedCondition:
        """Encode conditions (see :class:`cellflow.nn.ConditionEncoder`)."""
        return self.encoder(token_ids, doses, mask, covariates, time, drop=drop)

    def encode_groups(self, groups: torch.Tensor, drop: torch.Tensor | None = None) -> EncodedCondition:
        """Encode the training groups ``groups`` (``(B,)`` codes)."""
        return self.encode(
            self.group_token_ids[groups],
            self.group_doses[groups],
            self.group_mask[groups],
            self.group_covariates[groups],
            self.group_time[groups],
            drop=drop,
        )

    def forward(self, z: torch.Tensor, s: torch.Tensor, cond: EncodedCondition) -> torch.Tensor:
        """Velocity ``v(z, s, cond)``."""
        return self.backbone(z, s, cond)

    def start_states(
        self, source: torch.Tensor, batch_group: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Unpaired source states of a minibatch: control cells ``source`` (or noise)."""
        z0 = self.latent[source]
        if self.source == "noise":
            z0 = torch.randn(z0.shape, generator=generator).to(z0) if generator is not None else torch.randn_like(z0)
        return z0

    def relative_targets(self, z1: torch.Tensor, batch_group: torch.Tensor) -> torch.Tensor:
        """Targets minus their group's shift: the flow works in coordinates relative to latent arithmetic.

        The network then only ever sees states around the control cells, for seen and unseen
        conditions alike; generation adds the shift back after the ODE.
        """
        return z1 if self.source_shift is None else z1 - self.source_shift[batch_group]

    def pairs(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z0, z1, batch_group)`` of a minibatch of :class:`GroupBatches`: sources paired with targets."""
        target, source, batch_group = batch
        z1 = self.latent[target]
        if self.pair_source is not None:
            return self.pair_source[target], z1, batch_group  # reflow: the pairs are fixed by the previous flow
        z1 = self.relative_targets(z1, batch_group)
        if self.source_partner is not None:  # population OT: the same partner at every step
            return self.latent[self.source_partner[target]], z1, batch_group
        z0 = self.start_states(source, batch_group)
        pairing = random_pairing if self.config.coupling == "random" else ot_pairing_grouped
        return z0[pairing(z0, z1, batch_group)], z1, batch_group

    def flow_matching_loss(
        self, z0: torch.Tensor, z1: torch.Tensor, batch_group: torch.Tensor, s: torch.Tensor, *, dropout: float = 0.0
    ) -> torch.Tensor:
        """Mean squared error of the velocity on the straight paths ``z0 -> z1`` at flow times ``s``."""
        path = self.path.sample(z0, z1, s)
        # Encode each distinct group once, then expand to its rows.
        unique, inverse = torch.unique(batch_group, return_inverse=True)
        drop = torch.rand(len(unique), device=z1.device) < dropout if dropout > 0 else None
        cond = self.encode_groups(unique, drop=drop)
        cond = EncodedCondition(cond.vector[inverse], cond.tokens[inverse], cond.mask[inverse])
        return torch.nn.functional.mse_loss(self(path.zs, s, cond), path.velocity)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        z0, z1, batch_group = self.pairs(batch)
        s = sample_flow_time(z1.shape[0], device=z1.device)
        if self.config.distill_steps:
            # Distillation to k Euler steps: the velocity only has to be right on their grid.
            k = self.config.distill_steps
            s = torch.floor(s * k) / k
        loss = self.flow_matching_loss(z0, z1, batch_group, s, dropout=self.config.condition_dropout)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=z1.shape[0])
        return loss

    def validation_loss(self, batch) -> torch.Tensor:
        """Loss on a fixed minibatch of validation conditions, ``(target, source, batch_group, s)``."""
        *cells, s = batch
        z0, z1, batch_group = self.pairs(tuple(cells))
        return self.flow_matching_loss(z0, z1, batch_group, s.to(z1.device))

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.validation_loss(batch)
        self.log("val_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(batch[2]))
        return loss

    def configure_optimizers(self):
        cfg = self.config
        optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = max(1, min(cfg.warmup_steps, cfg.max_steps // 10))

        def schedule(step: int) -> float:
            # Linear warm-up, then cosine decay to a tenth of the rate.
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, cfg.max_steps - warmup))
            return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class TrajectoryFlowModule(FlowModule):
    """A :class:`FlowModule` over time courses, for backbones with ``sequence_over_time``.

    A state is a whole trajectory, ``(T, D)``: the latent at each of the ``T`` training time
    points. A minibatch draws, for each picked trajectory group (condition x context),
    ``cells_per_group`` cells at every time point and chains them into trajectories by
    optimal transport between consecutive time points (:func:`chain_trajectories`); source
    trajectories are chained the same way from the context's control cells, moved by the
    group's shift at each time point, and paired with the targets by optimal transport on the
    whole ``(T, D)`` trajectory. The flow ``z_s = (1 - s) z0 + s z1`` is regressed on
    ``z1 - z0`` at every time point at once; the backbone reads the time points as
    ``times`` (its per-token input) rather than from the condition.

    Parameters
    ----------
    time_points
        ``(T,)`` experimental times of the trajectory's points, scaled to about ``[0, 1]``.
    source_shift
        ``(G, T, D)`` shift of the sources of each group at each time point, or ``None``.
    **kwargs
        As for :class:`FlowModule` (``latent`` ``(N, D)`` per cell; with ``pair_source``,
        ``latent`` and ``pair_source`` are ``(P, T, D)`` fixed trajectory pairs instead).
    """

    def __init__(self, encoder, backbone, *, time_points: torch.Tensor, **kwargs) -> None:
        if not getattr(backbone, "sequence_over_time", False):
            raise ValueError(f"{type(backbone).__name__} is not a backbone over time; use FlowModule.")
        super().__init__(encoder, backbone, **kwargs)
        self.register_buffer("time_points", torch.as_tensor(time_points, dtype=torch.float32), persistent=False)

    def forward(self, z: torch.Tensor, s: torch.Tensor, cond: EncodedCondition) -> torch.Tensor:
        """Velocity ``v(z, s, cond)`` of trajectories ``z`` ``(B, T, D)`` at the training time points."""
        return self.backbone(z, s, cond, self.time_points)

    def start_states(self, source, batch_group, generator=None, *, cells_per_group: int | None = None):
        """Source trajectories ``(B, T, D)`` from control cells ``source`` ``(B, T)`` drawn per time point.

        Rows come in blocks of ``cells_per_group`` (default: the training config's) of one
        group each; within a block the control cells are chained into trajectories.
        """
        n = cells_per_group or self.config.cells_per_group
        if self.source == "control":
            z0 = chain_states(self.latent[source], n)
        else:
            shape = (*source.shape, self.latent.shape[-1])
            z0 = torch.randn(shape, generator=generator) if generator is not None else torch.randn(shape)
            z0 = z0.to(self.latent)
        return z0

    def pairs(self, batch):
        """Chained target and source trajectories of a minibatch of :class:`TrajectoryIndex`, paired."""
        target, source, batch_group = batch
        if self.pair_source is not None:  # reflow: rows are whole trajectories, paired by the previous flow
            return self.pair_source[target], self.latent[target], batch_group
        z1 = self.relative_targets(chain_states(self.latent[target], self.config.cells_per_group), batch_group)
        z0 = self.start_states(source, batch_group)
        pairing = random_pairing if self.config.coupling == "random" else ot_pairing_grouped
        return z0[pairing(z0, z1, batch_group)], z1, batch_group
