"""Checks of the command line's input and output paths, done before any work."""

from __future__ import annotations

import os
from pathlib import Path

from ._errors import CommandError, one_line

# The file that makes a directory a saved model (cellflow.models._persistence.CONFIG_FILE; not imported here,
# it loads torch). The weights file beside it is named after its content.
MODEL_CONFIG = "config.json"


def check_input_file(path: str, option: str) -> Path:
    """``path`` must be an existing, readable file."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{option} {path}: no such file.")
    if file.is_dir():
        raise IsADirectoryError(f"{option} {path} is a directory, not a file.")
    if not os.access(file, os.R_OK):
        raise PermissionError(f"{option} {path} is not readable.")
    return file


def check_h5ad(path: str, option: str = "--data") -> None:
    """``path`` must be a readable HDF5 file (h5py only reads its signature)."""
    import h5py

    check_input_file(path, option)
    if not h5py.is_hdf5(path):
        raise CommandError(f"{option} {path} is not an .h5ad file (not HDF5).")


def read_h5ad(path: str, option: str = "--data"):
    """Read an .h5ad file, refusing one that cannot be read or holds no cells or no genes."""
    import anndata as ad

    check_h5ad(path, option)
    try:
        adata = ad.read_h5ad(path)
    except (OSError, ValueError, KeyError, TypeError) as error:  # truncated or not written by anndata
        raise CommandError(f"cannot read {option} {path} as .h5ad: {one_line(error)}") from error
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise CommandError(f"{option} {path} holds {adata.n_obs} cells x {adata.n_vars} genes; nothing to use.")
    return adata


def check_writable_dir(directory: Path, what: str) -> None:
    """The nearest existing ancestor of ``directory`` (itself included) must be a writable directory."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{what}: {existing} is not a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what}: directory {existing} is not writable.")


def check_model_out(path: str, overwrite: bool) -> None:
    """``train --out``: a directory (new, or holding a model only with ``--overwrite``), writable."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {path} is a file; train saves a model to a directory.")
    if (out / MODEL_CONFIG).exists() and not overwrite:
        raise FileExistsError(f"--out {path} already holds a model; pass --overwrite to replace it.")
    check_writable_dir(out, f"--out {path}")


def check_model_dir(path: str) -> None:
    """``generate --model``: a directory written by ``model.save``."""
    model = Path(path)
    if not model.is_dir():
        raise FileNotFoundError(f"--model {path} is not a directory (one saved by `cellflow train`).")
    if not (model / MODEL_CONFIG).is_file():
        raise FileNotFoundError(f"--model {path} has no {MODEL_CONFIG}; is it a directory saved by train?")


def check_file_out(path: str, overwrite: bool, model: Path) -> None:
    """``generate --out``: a file outside the ``model`` directory, new unless ``overwrite``, in a writable directory."""
    out = Path(path)
    if same_path(out, model) or same_path(out.parent, model):
        raise ValueError(f"--out {path} would replace the model in --model {model} or a file of it; choose another.")
    if out.is_dir():
        raise IsADirectoryError(f"--out {path} is a directory; give a file name such as {out / 'generated.h5ad'}.")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {path} exists; pass --overwrite to replace it.")
    parent = out.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"--out {path}: directory {parent} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {path}: directory {parent} is not writable.")
    if out.exists() and not os.access(out, os.W_OK):
        raise PermissionError(f"--out {path} is not writable.")


def same_path(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (links resolved; hard links too when both exist)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


# ---------------------------------------------------------------------- verbs
