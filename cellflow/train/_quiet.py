"""Keep Lightning's start-up chatter out of the user's notebook; progress bars are separate."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning")


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info logs (accelerator lines, tips) and known harmless warnings."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # A few batches per epoch on small data sets, training without a validation split,
            # and a deprecation inside Lightning itself.
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message=".*validation_step.*but have no.*val_dataloader.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            # The on-disk loader's dataset is iterable with a length and is read by one process.
            warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
