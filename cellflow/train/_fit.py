"""Run a flow module's training loop with Lightning."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from ._flow_module import FlowModule, FlowTrainingConfig, GroupBatches
from ._groups import GroupIndex
from ._quiet import quiet_lightning
from ._validation import VALIDATION_SEED_OFFSET, BestWeights, EarlyStopping, fixed_validation_batches


def fit_flow_module(
    module: FlowModule,
    index: GroupIndex,
    n_groups: int,
    config: FlowTrainingConfig,
    *,
    validation_groups: torch.Tensor | None = None,
    early_stopping: EarlyStopping | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    progress_bar: bool = True,
) -> dict:
    """Train ``module`` for up to ``config.max_steps`` minibatches drawn from ``index``.

    With ``validation_groups`` (group codes), those groups are left out of training; every
    ``early_stopping.every`` steps the flow-matching loss on fixed minibatches of them is
    computed, training stops after ``early_stopping.patience`` checks without improvement, and
    the weights of the best check are restored. The networks are moved back to the CPU and
    set to evaluation mode afterwards.

    Returns
    -------
    ``{"final_loss": last training loss, "steps": steps taken}``, and with validation
    ``"best_val_loss"`` and ``"best_step"``.
    """
    module.train()  # a second fit (train_flow again, reflow) starts from networks left in evaluation mode
    groups = torch.arange(n_groups)
    validate = validation_groups is not None and len(validation_groups) > 0
    callbacks, options = [], {}
    if validate:
        early_stopping = early_stopping or EarlyStopping()
        groups = groups[~torch.isin(groups, validation_groups)]
        seed = config.seed + VALIDATION_SEED_OFFSET
        val_batches = fixed_validation_batches(
            index, validation_groups, config.groups_per_batch, config.cells_per_group, seed
        )
        best = BestWeights()
        callbacks = [
            pl.callbacks.EarlyStopping(
                monitor="val_loss", patience=early_stopping.patience, min_delta=early_stopping.min_delta, mode="min"
            ),
            best,
        ]
        options = {"val_check_interval": early_stopping.every, "check_val_every_n_epoch": None}
    loader = torch.utils.data.DataLoader(GroupBatches(index, groups, config), batch_size=None)
    with quiet_lightning():
        trainer = pl.Trainer(
            max_steps=config.max_steps,
            accelerator=accelerator,
            devices=devices if accelerator != "cpu" else 1,
            precision=config.precision,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress_bar,
            log_every_n_steps=50,
            num_sanity_val_steps=0,
            limit_val_batches=None if validate else 0,
            callbacks=callbacks,
            **options,
        )
        trainer.fit(
            module,
            train_dataloaders=loader,
            val_dataloaders=torch.utils.data.DataLoader(val_batches, batch_size=None) if validate else None,
        )
    module.encoder.cpu().eval()
    module.backbone.cpu().eval()
    result = {
        "final_loss": float(trainer.callback_metrics.get("train_loss", float("nan"))),
        "steps": trainer.global_step,
    }
    if validate:
        result |= {"best_val_loss": best.best_loss, "best_step": best.best_step}
    return result
