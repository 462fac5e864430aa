"""Ctrl-C during training stays a ``KeyboardInterrupt`` for the caller.

Lightning turns a ``KeyboardInterrupt`` inside ``Trainer.fit`` into ``sys.exit(1)`` and ignores
every later Ctrl-C of the process. A notebook user would lose the kernel's interrupt key and a
script its exit code. While training, Ctrl-C raises :class:`TrainingInterrupted` instead, which
Lightning tears down after and re-raises; it leaves here as a plain ``KeyboardInterrupt``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class TrainingInterrupted(BaseException):
    """Ctrl-C (SIGINT) while Lightning trains; re-raised as ``KeyboardInterrupt`` outside the trainer."""


def _raise_interrupted(signum, frame) -> None:
    raise TrainingInterrupted


@contextmanager
def interruptible() -> Iterator[None]:
    """Let Ctrl-C interrupt the training inside this block as a ``KeyboardInterrupt``, with the handler restored."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    previous = signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        yield
    except TrainingInterrupted:
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGINT, previous)
