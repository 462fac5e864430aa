"""Run a flow training plan with Lightning."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from ._groups import GroupIndex
from ._interrupt import interruptible
from ._plan import FlowTrainingPlan, GroupBatches
from ._quiet import quiet_lightning
from ._resume import checkpoint_callbacks, fingerprint, finish, resume_step
from ._validation import VALIDATION_SEED_OFFSET, BestWeights, fixed_validation_batches


class FixedBatches(torch.utils.data.IterableDataset):
    """The same minibatches, in the same order, on every rank."""

    def __init__(self, batches: list) -> None:
        super().__init__()
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


CURVE_EVERY = 10
"""The loss curve keeps the training loss of every tenth step (it is saved with the model)."""


class LossCurves(pl.Callback):
    """Records ``[step, training loss]`` every :data:`CURVE_EVERY` steps, ``[step, validation loss]`` at checks."""

    def __init__(self) -> None:
        self.train: list[list[float]] = []
        self.validation: list[list[float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        if trainer.global_step % CURVE_EVERY == 0 and outputs is not None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.train.append([trainer.global_step, float(loss)])

    def on_validation_end(self, trainer, pl_module) -> None:  # noqa: D102
        if "val_loss" in trainer.callback_metrics:
            self.validation.append([trainer.global_step, float(trainer.callback_metrics["val_loss"])])


def fit_flow_plan(
    plan: FlowTrainingPlan,
    index: GroupIndex,
    *,
    seed: int,
    validation_groups: torch.Tensor | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    progress_bar: bool = True,
    trainer_kwargs: dict | None = None,
    checkpoint_dir: Path | None = None,
) -> dict:
    """Train ``plan`` for up to ``plan.config.steps`` minibatches drawn from ``index``.

    With ``validation_groups`` (group codes), those groups are left out of training; every
    ``config.validation_every`` steps the flow-matching loss on fixed minibatches of them is
    computed, training stops after ``config.patience`` checks without improvement, and the
    weights of the best check are restored. The flow module is moved back to the CPU and set
    to evaluation mode afterwards, also when training is interrupted.

    With ``checkpoint_dir``, Lightning keeps a checkpoint there every few steps, and a fit that
    finds one resumes from it to the same result as a run never stopped (on the CPU).

    Returns
    -------
    ``{"final_loss": last training loss, "steps": steps taken, "curve": [step, loss] every
    ``CURVE_EVERY`` steps}``, and with validation ``"best_val_loss"``, ``"best_step"`` and
    ``"validation_curve"`` ([step, loss] at every check).
    """
    config = plan.config
    groups = torch.arange(index.n_groups)
    validate = validation_groups is not None and len(validation_groups) > 0
    callbacks, options = [], {}
    if validate:
        groups = groups[~torch.isin(groups, validation_groups)]
        val_batches = fixed_validation_batches(
            index, validation_groups, config.groups_per_batch, config.cells_per_group, seed + VALIDATION_SEED_OFFSET
        )
        best = BestWeights()
        callbacks = [pl.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, mode="min"), best]
        options = {"val_check_interval": config.validation_every, "check_val_every_n_epoch": None}
    resume_from, done = resume_step(checkpoint_dir, fingerprint(plan, seed) if checkpoint_dir else "")
    if checkpoint_dir is not None:
        callbacks = callbacks + checkpoint_callbacks(checkpoint_dir)
    curves = LossCurves()
    callbacks = callbacks + [curves]
    loader = torch.utils.data.DataLoader(GroupBatches(index, groups, config, seed, skip=done), batch_size=None)
    extra = dict(trainer_kwargs or {})
    callbacks = callbacks + list(extra.pop("callbacks", []))  # the caller's callbacks run next to ours
    plan.train()  # a second fit (train_flow again, reflow) starts from networks left in evaluation mode
    try:
        with quiet_lightning(), interruptible():
            trainer = pl.Trainer(
                **{
                    "max_steps": config.steps,
                    "accelerator": accelerator,
                    # On the CPU one process, unless a distributed strategy is asked for.
                    "devices": devices if accelerator != "cpu" or "strategy" in extra else 1,
                    "precision": config.precision,
                    "logger": False,
                    "enable_checkpointing": checkpoint_dir is not None,
                    "enable_model_summary": False,
                    "enable_progress_bar": progress_bar,
                    "log_every_n_steps": 50,
                    "num_sanity_val_steps": 0,
                    "limit_val_batches": None if validate else 0,
                    "callbacks": callbacks,
                    **options,
                    **extra,
                }
            )
            trainer.fit(
                plan,
                train_dataloaders=loader,
                # Iterable, so that under DDP every rank scores all the fixed batches (Lightning
                # would split a list between ranks and early stopping would see different losses).
                val_dataloaders=torch.utils.data.DataLoader(FixedBatches(val_batches), batch_size=None)
                if validate
                else None,
                ckpt_path=resume_from,
                weights_only=True,
            )
    finally:
        plan.flow.cpu().eval()
    finish(checkpoint_dir)
    result = {
        "final_loss": float(trainer.callback_metrics.get("train_loss", float("nan"))),
        "steps": trainer.global_step,
        "curve": curves.train,
    }
    if validate:
        result |= {"best_val_loss": best.best_loss, "best_step": best.best_step, "validation_curve": curves.validation}
    return result
