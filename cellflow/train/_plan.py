"""The Lightning training plan of the flow: minibatches of paired states, the flow module's loss, AdamW."""

from __future__ import annotations

from dataclasses import fields

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import IterableDataset

from ..flow import ConditionBatch, FlowModule, chain_states, ot_pairing_grouped, random_pairing, sample_flow_time
from ..nn import EncodedCondition
from ._config import FlowTrainingConfig
from ._groups import GroupIndex
from ._validation import VALIDATION_SEED_OFFSET

TRAINING_DRAWS_OFFSET = 104729  # the plan's stream: training seed + this, apart from the minibatch stream


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s stream under distributed training: ``seed`` itself on rank 0.

    Other ranks get a seed derived from ``(seed, rank)`` by numpy's ``SeedSequence``, which no
    fixed offset of the other streams (validation, the plan's draws, reflow) can collide with.
    """
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def rank_and_world_size() -> tuple[int, int]:
    """Rank of the calling process and the number of processes (0 and 1 outside distributed training)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def chunk_share(n_rows: int, chunk: int) -> range:
    """The chunks of ``chunk`` rows (of ``n_rows``) the calling process takes in a pass shared among processes.

    Contiguous and as even as the chunks allow; every chunk once over the ranks; all of them
    outside distributed training.
    """
    rank, world = rank_and_world_size()
    n_chunks = -(-n_rows // chunk)
    return range(n_chunks * rank // world, n_chunks * (rank + 1) // world)


class GroupBatches(IterableDataset):
    """An endless stream of minibatches: groups drawn uniformly, cells drawn within them.

    Under distributed training (Lightning's DDP) each of the ``W`` ranks draws
    ``ceil(groups_per_batch / W)`` groups from its own stream, so the global minibatch keeps
    about the size of a single-process one.
    """

    def __init__(
        self, index: GroupIndex, groups: torch.Tensor, config: FlowTrainingConfig, seed: int, skip: int = 0
    ) -> None:
        super().__init__()
        self.index, self.groups, self.config, self.seed, self.skip = index, groups, config, seed, skip

    def __iter__(self):
        # Under distributed training each rank draws its own share of the global minibatch.
        rank, world = rank_and_world_size()
        generator = torch.Generator().manual_seed(rank_seed(self.seed, rank))
        n = min(-(-self.config.groups_per_batch // world), len(self.groups))
        drawn = 0
        while True:
            picked = self.groups[torch.randperm(len(self.groups), generator=generator)[:n]]
            batch = self.index.sample(picked, self.config.cells_per_group, generator)
            drawn += 1
            if drawn > self.skip:  # a resumed run replays the batches it has trained on already
                yield batch


class FlowTrainingPlan(pl.LightningModule):
    """Trains a :class:`~cellflow.flow.FlowModule` by (OT-coupled) rectified flow.

    The plan holds the training data (next to the weights, so Lightning moves them to the
    device; they are not saved) and turns a minibatch of cell indices into paired states.
    The loss, the velocity and the shifts are the flow module's.

    Parameters
    ----------
    module
        The flow module to train.
    groups
        Network inputs and context of every training group.
    latent
        ``(N, D)`` latent of every cell. With ``pair_source``: ``(P, D)`` (``(P, T, D)`` over
        time) end points of fixed pairs instead (reflow).
    config
        Optimisation settings.
    group_shift
        ``(G, D)`` (``(G, T, D)`` over time) shift of each group, subtracted from its targets:
        the flow's coordinates. ``None``: no shift.
    source_partner
        ``(N,)`` fixed source cell of every target cell (``coupling="ot"``), or ``None`` to
        pair every minibatch.
    pair_source
        ``(P, D)`` (``(P, T, D)``) fixed sources of the pairs whose end points are ``latent``
        (reflow): rows are then neither re-paired nor shifted.
    seed
        Seed of the plan's own random stream (flow times, condition dropout, noise sources,
        random pairs). It is kept apart from torch's global stream, which Lightning and data
        loaders also draw from, and saved with every checkpoint, so that a resumed run draws
        exactly what an uninterrupted one does.
    """

    def __init__(
        self,
        module: FlowModule,
        groups: ConditionBatch,
        latent: torch.Tensor,
        config: FlowTrainingConfig,
        *,
        group_shift: torch.Tensor | None = None,
        source_partner: torch.Tensor | None = None,
        pair_source: torch.Tensor | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.flow, self.config = module, config
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed + TRAINING_DRAWS_OFFSET)
        for name, value in groups.tensors().items():
            self.register_buffer(f"group_{name}", value, persistent=False)
        self.register_buffer("latent", latent, persistent=False)
        self.register_buffer("group_shift", group_shift, persistent=False)
        self.register_buffer("source_partner", source_partner, persistent=False)
        self.register_buffer("pair_source", pair_source, persistent=False)

    def groups(self, rows: torch.Tensor) -> ConditionBatch:
        """Network inputs of the training groups ``rows``."""
        # Kept as buffers (moved to the device with the weights), gathered back into a batch here.
        table = {f.name: getattr(self, f"group_{f.name}") for f in fields(ConditionBatch)}
        return ConditionBatch(**table)[rows]

    def encode_groups(
        self, batch_group: torch.Tensor, dropout: float = 0.0, generator: torch.Generator | None = None
    ) -> EncodedCondition:
        """Encoded condition of every row: each distinct group encoded once (nulled with ``dropout``), then expanded."""
        unique, inverse = torch.unique(batch_group, return_inverse=True)
        drop = None
        if dropout > 0:
            drop = (torch.rand(len(unique), generator=generator or self.generator) < dropout).to(batch_group.device)
        cond = self.flow.condition(self.groups(unique), drop=drop)
        return EncodedCondition(cond.vector[inverse], cond.tokens[inverse], cond.mask[inverse])

    def _states(self, table: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """Rows of ``table`` for ``(B, T)`` indices: ``(B, T, D)`` trajectories over time, else ``(B, D)``."""
        states = table[cells]
        over_time_cells = self.flow.over_time and self.pair_source is None
        return states if over_time_cells else states[:, 0]

    def source_states(
        self, source: torch.Tensor, generator: torch.Generator | None = None, cells_per_group: int | None = None
    ) -> torch.Tensor:
        """Unpaired source states of a minibatch: control cells ``source`` (chained over time), or noise.

        Over time, rows come in blocks of ``cells_per_group`` (default: the config's) of one
        group each, within which the control cells are chained into trajectories.
        """
        over_time = self.flow.over_time
        if self.flow.source == "noise":
            shape = (*source.shape, self.latent.shape[-1]) if over_time else (source.shape[0], self.latent.shape[-1])
            return self.flow.noise(shape, generator or self.generator, like=self.latent)
        z0 = self._states(self.latent, source)
        return chain_states(z0, cells_per_group or self.config.cells_per_group) if over_time else z0

    def pairs(self, batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z0, z1, batch_group)`` of a minibatch of :class:`GroupBatches`: sources paired with relative targets.

        Random draws (noise sources, random pairs) come from ``generator``, by default the plan's stream.
        """
        target, source, batch_group = batch
        if self.pair_source is not None:  # reflow: the pairs are fixed by the previous flow
            return self._states(self.pair_source, target), self._states(self.latent, target), batch_group
        z1 = self._states(self.latent, target)
        if self.flow.over_time:
            z1 = chain_states(z1, self.config.cells_per_group)
        z1 = self.flow.relative(z1, None if self.group_shift is None else self.group_shift[batch_group])
        if self.source_partner is not None:  # population OT: the same partner at every step
            return self.latent[self.source_partner[target[:, 0]]], z1, batch_group
        z0 = self.source_states(source, generator)
        if self.config.coupling == "random":
            return z0[random_pairing(z0, z1, batch_group, generator=generator or self.generator)], z1, batch_group
        return z0[ot_pairing_grouped(z0, z1, batch_group)], z1, batch_group

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:  # noqa: D102
        z0, z1, batch_group = self.pairs(batch)
        s = sample_flow_time(z1.shape[0], generator=self.generator).to(z1.device)
        if self.config.distill_steps:
            # Distillation to k Euler steps: the velocity only has to be right on their grid.
            k = self.config.distill_steps
            s = torch.floor(s * k) / k
        cond = self.encode_groups(batch_group, self.config.condition_dropout)
        loss = self.flow.loss(z0, z1, s, cond)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=z1.shape[0])
        return loss

    def validation_loss(self, batch) -> torch.Tensor:
        """Loss on a fixed minibatch of validation conditions, ``(target, source, batch_group, s)``."""
        *cells, s = batch
        fixed = torch.Generator().manual_seed(self.seed + VALIDATION_SEED_OFFSET)  # the same draws at every check
        z0, z1, batch_group = self.pairs(tuple(cells), fixed)
        return self.flow.loss(z0, z1, s.to(z1.device), self.encode_groups(batch_group))

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:  # noqa: D102
        loss = self.validation_loss(batch)
        self.log("val_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(batch[2]))
        return loss

    def on_fit_start(self) -> None:  # noqa: D102
        # Under DDP each rank draws its own flow times, dropout and noise (rank 0 keeps the
        # single-process stream). Resuming is refused with a distributed strategy, so no
        # restored stream is overwritten here.
        if self.trainer.world_size > 1:
            self.generator.manual_seed(rank_seed(self.seed + TRAINING_DRAWS_OFFSET, self.trainer.global_rank))

    def on_save_checkpoint(self, checkpoint: dict) -> None:  # noqa: D102
        checkpoint["cellflow_generator"] = self.generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:  # noqa: D102
        self.generator.set_state(checkpoint["cellflow_generator"])

    def configure_optimizers(self):  # noqa: D102
        cfg = self.config
        parameters = list(self.flow.parameters())
        # torch's fused AdamW: one kernel for all tensors instead of a loop over them (a fifth of a
        # small backbone's step on a CPU); for the devices that have it.
        fused = bool(parameters) and all(p.device.type in ("cpu", "cuda") for p in parameters)
        optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        warmup = max(1, min(cfg.warmup_steps, cfg.steps // 10))

        def schedule(step: int) -> float:
            # Linear warm-up, then cosine decay to a tenth of the rate.
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
            return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
