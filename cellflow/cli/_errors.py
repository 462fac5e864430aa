"""Exit codes, and the user errors and signals the command line turns into them."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import traceback
from collections.abc import Iterator

EXIT_OK, EXIT_USER_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_USER_ERROR: "user error (bad input, bad option value, unreadable file) or internal error",
    EXIT_USAGE: "usage error (unknown option, missing argument)",
    EXIT_INTERRUPTED: "interrupted (SIGINT, Ctrl+C)",
    EXIT_TERMINATED: "terminated (SIGTERM)",
}


class CommandError(Exception):
    """A user error whose message is complete (names the file or option at fault)."""


class Signalled(BaseException):
    """Raised by the command's SIGINT and SIGTERM handlers.

    A ``BaseException`` so that no ``except Exception`` swallows it, and not a
    ``KeyboardInterrupt``, which Lightning turns into ``sys.exit(1)`` during training.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Make SIGINT and SIGTERM raise :class:`Signalled` for the duration, then restore the previous handlers.

    A signal that is ignored (``nohup``, a background job) stays ignored. Lightning adds its own
    SIGTERM handler during training and calls this one after it.
    """
    if threading.current_thread() is not threading.main_thread():  # signal.signal works in the main thread only
        yield
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not signal.SIG_IGN:
            previous[signum] = handler
            signal.signal(signum, _raise_signalled)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _raise_signalled(signum: int, frame: object) -> None:
    raise Signalled(signum)


def stopped(verb: str, signum: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    what = "interrupted" if signum == signal.SIGINT else "terminated"
    print(f"cellflow {verb}: {what} ({signal.Signals(signum).name}); stopped", file=sys.stderr)
    return 128 + signum


def is_lightning_sigterm(error: SystemExit) -> bool:
    """Whether ``error`` is Lightning's ``SIGTERMException`` (a ``SystemExit``; Lightning is not imported here)."""
    module = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return module is not None and isinstance(error, module.SIGTERMException)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions reported as user errors (bad input, option value or file), in one line.

    ``OSError`` covers ``FileNotFoundError``, ``FileExistsError``, ``IsADirectoryError``,
    ``PermissionError`` and h5py's errors on a file that is not (or no longer) HDF5.
    safetensors' error on damaged weights is looked up only when safetensors was imported.
    """
    errors: list[type[BaseException]] = [CommandError, ValueError, KeyError, TypeError, OSError]
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None and hasattr(safetensors, "SafetensorError"):
        errors.append(safetensors.SafetensorError)
    return tuple(errors)


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (a ``KeyError`` without its quotes)."""
    message = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else error
    text = " ".join(str(message).split())
    return text or type(error).__name__
