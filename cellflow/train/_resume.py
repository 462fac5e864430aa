"""Stop the flow's training at any step and resume it to the same result.

Lightning's checkpoint holds the weights, the optimizer and schedule, the step and the
callbacks. Two things make the resumed run identical to an uninterrupted one (on the CPU):
the training plan draws flow times, condition dropout, noise and random pairs from its own
generator, whose state is saved with each checkpoint (torch's global stream is also drawn
from by data loaders and Lightning, so it cannot be replayed), and the stream of minibatches,
whose generator is seeded once, is replayed up to the checkpoint's step. Checkpoints are
loaded with ``weights_only=True``: tensors and plain containers only, nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

CHECKPOINT_NAME = "last.ckpt"
EVERY_STEPS = 50


def checkpoint_callbacks(directory: Path, every: int = EVERY_STEPS) -> list[pl.Callback]:
    """Callbacks that keep ``directory / last.ckpt`` up to date every ``every`` steps."""
    keep = pl.callbacks.ModelCheckpoint(
        dirpath=directory, filename="step{step}", save_top_k=0, save_last=True, every_n_train_steps=every
    )
    keep.CHECKPOINT_NAME_LAST = CHECKPOINT_NAME.removesuffix(".ckpt")
    return [keep]


def resume_step(directory: Path | None) -> tuple[Path | None, int]:
    """The checkpoint to resume from in ``directory`` (``None`` when there is none) and its global step."""
    if directory is None or not (directory / CHECKPOINT_NAME).exists():
        return None, 0
    path = directory / CHECKPOINT_NAME
    try:
        step = int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception as error:  # a checkpoint cut short by a kill: start this stage again
        raise ValueError(
            f"{path} cannot be read ({type(error).__name__}: {error}); delete it to train this stage from its start."
        ) from None
    return path, step
