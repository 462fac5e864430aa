"""Run a flow module's training loop with Lightning."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from ._flow_module import FlowModule, FlowTrainingConfig, GroupBatches
from ._groups import GroupIndex
from ._quiet import quiet_lightning


def fit_flow_module(
    module: FlowModule,
    index: GroupIndex,
    n_groups: int,
    config: FlowTrainingConfig,
    *,
    accelerator: str = "auto",
    devices: int | str = "auto",
    progress_bar: bool = True,
) -> float:
    """Train ``module`` for ``config.max_steps`` minibatches drawn from ``index``; return the last loss.

    The networks are moved back to the CPU and set to evaluation mode afterwards.
    """
    loader = torch.utils.data.DataLoader(GroupBatches(index, torch.arange(n_groups), config), batch_size=None)
    with quiet_lightning():
        trainer = pl.Trainer(
            max_steps=config.max_steps,
            accelerator=accelerator,
            devices=devices if accelerator != "cpu" else 1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress_bar,
            log_every_n_steps=50,
        )
        trainer.fit(module, train_dataloaders=loader)
    module.encoder.cpu().eval()
    module.backbone.cpu().eval()
    return float(trainer.callback_metrics.get("train_loss", float("nan")))
