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

import hashlib
import json
import os
from pathlib import Path

import lightning.pytorch as pl
import torch

CHECKPOINT_NAME = "last.ckpt"
FIT_FILE = "fit.json"  # what the checkpoint belongs to: options, data and starting weights
EVERY_STEPS = 50


def checkpoint_callbacks(directory: Path, every: int = EVERY_STEPS) -> list[pl.Callback]:
    """Callbacks that keep ``directory / last.ckpt`` (Lightning's latest) up to date every ``every`` steps."""
    return [pl.callbacks.ModelCheckpoint(dirpath=directory, save_top_k=0, save_last=True, every_n_train_steps=every)]


def fingerprint(plan, seed: int) -> str:
    """A hash of what a fit depends on: its options, seed, training data and starting weights."""
    digest = hashlib.sha256(json.dumps([repr(plan.config), seed]).encode())
    for name, tensor in [*plan.named_buffers(), *plan.state_dict().items()]:
        if tensor is not None:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def resume_step(directory: Path | None, fit: str) -> tuple[Path | None, int]:
    """The checkpoint to resume from (``None`` to start afresh) and its global step.

    ``fit`` is the :func:`fingerprint` of the fit about to run; a checkpoint left by another fit
    (other options, data or starting weights) is refused rather than resumed.
    """
    if directory is None:
        return None, 0
    path, record = directory / CHECKPOINT_NAME, directory / FIT_FILE
    if path.exists():
        if not record.exists() or json.loads(record.read_text()).get("fit") != fit:
            raise ValueError(
                f"{path} is the checkpoint of another training run (other options, data or starting weights); "
                "give another checkpoint folder, or delete this one to train from the start."
            )
        try:
            return path, int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
        except Exception as error:
            raise ValueError(f"{path} cannot be read ({type(error).__name__}: {error}); delete it.") from None
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{FIT_FILE}.tmp"
    tmp.write_text(json.dumps({"fit": fit}))
    os.replace(tmp, record)
    return None, 0


def finish(directory: Path | None) -> None:
    """A completed fit: its checkpoint has served (a later fit in the folder starts afresh)."""
    if directory is not None:
        (directory / CHECKPOINT_NAME).unlink(missing_ok=True)
        (directory / FIT_FILE).unlink(missing_ok=True)
