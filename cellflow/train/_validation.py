"""Early stopping of the flow on a validation split of conditions."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import numpy as np
import torch

from ..flow import sample_flow_time

VALIDATION_SEED_OFFSET = 7919  # validation draws: training seed + this, apart from the training stream


def check_validation_split(n_perturbed: int, fraction: float) -> None:
    """Raise if ``fraction > 0`` and fewer than two perturbed conditions exist (one must remain to train on)."""
    if fraction > 0 and n_perturbed < 2:
        raise ValueError(
            f"validation_fraction={fraction} needs at least 2 perturbed conditions to split, found {n_perturbed}; "
            "train without early stopping (validation_fraction=0)."
        )


def split_validation_conditions(
    group_condition: np.ndarray, group_is_control: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """Pick whole conditions (every context and time point of each) for validation.

    Parameters
    ----------
    group_condition
        ``(G,)`` condition code of each group.
    group_is_control
        ``(G,)`` whether a group holds control cells (never held out: they are the sources).
    fraction
        Share of the perturbed conditions to hold out; at least one is.
    seed
        Seed of the draw.

    Returns
    -------
    ``(G,)`` boolean mask of the validation groups.

    Raises
    ------
    ValueError
        If fewer than two perturbed conditions exist (one must remain to train on).
    """
    perturbed = np.unique(group_condition[~group_is_control])
    check_validation_split(len(perturbed), fraction)
    n_held = int(np.clip(round(fraction * len(perturbed)), 1, len(perturbed) - 1))
    held = np.random.default_rng(seed).choice(perturbed, n_held, replace=False)
    return np.isin(group_condition, held) & ~group_is_control


def validation_split(design, fraction: float, seed: int) -> torch.Tensor:
    """Codes of the groups of a :class:`~cellflow.train.TrainingDesign` held out for validation (see above)."""
    held = split_validation_conditions(design.group_condition, design.group_is_control, fraction, seed)
    return torch.as_tensor(np.flatnonzero(held))


def fixed_validation_batches(index, groups: torch.Tensor, groups_per_batch: int, cells_per_group: int, seed: int):
    """Minibatches of the validation groups drawn once, with their flow times, so every check sees the same loss.

    Returns a list of ``(target, source, batch_group, s)``; ``index`` is a
    :class:`~cellflow.train.GroupIndex`.
    """
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for chunk in torch.split(groups, max(1, groups_per_batch)):
        target, source, batch_group = index.sample(chunk, cells_per_group, generator)
        batches.append((target, source, batch_group, sample_flow_time(len(batch_group), generator=generator)))
    return batches


class BestWeights(pl.Callback):
    """Keep the weights of the best validation check and restore them when training ends.

    After fitting, ``best_loss`` and ``best_step`` describe that check.
    """

    def __init__(self, monitor: str = "val_loss") -> None:
        self.monitor = monitor
        self.best_loss, self.best_step = float("inf"), 0
        self._state = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        loss = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or loss is None:
            return
        if float(loss) < self.best_loss:
            self.best_loss, self.best_step = float(loss), trainer.global_step
            self._state = copy.deepcopy(pl_module.state_dict())

    def state_dict(self) -> dict:  # noqa: D102 - kept in checkpoints, so a resumed run knows its best check
        return {"best_loss": self.best_loss, "best_step": self.best_step, "state": self._state}

    def load_state_dict(self, state_dict: dict) -> None:  # noqa: D102
        self.best_loss, self.best_step, self._state = (state_dict[k] for k in ("best_loss", "best_step", "state"))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        if self._state is not None:
            pl_module.load_state_dict(self._state)
