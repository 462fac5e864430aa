"""Write an AnnData to ``.h5ad`` or ``.zarr`` a chunk of cells at a time, with anndata's own writers.

Shared by the simulator (:func:`cellflow.datasets.simulate_perturbseq`) and generation
(:func:`cellflow.tl.generate`), which both produce cells block by block: only one chunk of
cells is ever held in memory. The first chunk is written by
:func:`anndata.experimental.write_dispatched` with resizable storage along the cells, so the
file follows anndata's on-disk format exactly; later chunks are appended: the counts by the
sparse dataset's own ``append`` (:func:`anndata.io.sparse_dataset`), the columns of ``obs``
(categorical codes, numbers, strings) and the arrays of ``obsm`` row by row.

The file is written under a temporary name in the target's folder and renamed once complete,
so an interrupted run never leaves a file that looks complete. Storage chunks have fixed sizes,
so what is written does not depend on how the cells were split into chunks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData

FORMATS = {".h5ad": "h5ad", ".zarr": "zarr"}
ENTRIES_PER_STORAGE_CHUNK = 2**18  # values per stored chunk of the counts (1 MB of float32)
ROWS_PER_STORAGE_CHUNK = 2**16  # cells per stored chunk of obs columns and obsm arrays

Chunk = tuple[sparse.csr_matrix, pd.DataFrame, Mapping[str, np.ndarray]]
"""Counts (CSR), obs and obsm arrays of consecutive cells."""


def check_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """The target path, checked before any work: a known suffix, an existing folder, no file unless ``overwrite``.

    Raises
    ------
    ValueError
        The name ends in neither ``.h5ad`` nor ``.zarr``, or its folder does not exist.
    FileExistsError
        Something exists at ``out`` and ``overwrite`` is false.
    """
    if not isinstance(out, str | os.PathLike):
        raise TypeError(f"out must be a path ending in .h5ad or .zarr, got {type(out).__name__}.")
    if not isinstance(overwrite, bool | np.bool_):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}.")
    path = Path(out).expanduser()
    if path.suffix not in FORMATS:
        raise ValueError(f"out={str(out)!r} must end in .h5ad or .zarr (the format follows the name).")
    if not path.parent.is_dir():
        raise ValueError(f"out={str(out)!r}: the folder {str(path.parent)!r} does not exist; create it first.")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"out={str(out)!r} exists; pass overwrite=True to replace it, or choose another name.")
    return path


def check_chunk_size(chunk_size) -> int:
    """``chunk_size`` as an int >= 1 (bools and floats refused)."""
    if isinstance(chunk_size, bool | np.bool_) or not isinstance(chunk_size, int | np.integer):
        raise TypeError(f"chunk_size must be an int (cells written at a time), got {chunk_size!r}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be at least 1.")
    return int(chunk_size)


def write_chunks(
    out: str | os.PathLike,
    chunks: Iterable[Chunk],
    *,
    var: pd.DataFrame,
    uns: Mapping | Callable[[], Mapping],
    chunk_size: int,
    overwrite: bool = False,
) -> AnnData:
    """Write consecutive chunks of cells to ``out`` and return the result opened without loading ``X``.

    Parameters
    ----------
    out
        Target path; ``.h5ad`` writes HDF5, ``.zarr`` a zarr store (anndata's
        ``settings.zarr_write_format``).
    chunks
        ``(X, obs, obsm)`` of consecutive cells, in order: CSR counts, the cells' ``obs``
        (the same columns and categories in every chunk) and a mapping of ``obsm`` arrays.
        Consumed lazily: the cells are made as they are written.
    var
        The genes.
    uns
        Unstructured annotations, or a function that returns them once every chunk is written
        (for what is known only after the cells are made).
    chunk_size
        Cells written at a time: the chunks are regrouped into pieces of this many cells.
    overwrite
        Replace what exists at ``out`` (only once the new file is complete).

    Returns
    -------
    anndata.AnnData
        See :func:`open_backed`.
    """
    path = check_output(out, overwrite)
    chunk_size = check_chunk_size(chunk_size)
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    _remove(partial)
    store = None
    try:
        for X, obs, obsm in _regroup(chunks, chunk_size):
            if store is None:
                store = _Store(partial, FORMATS[path.suffix], X, obs, obsm, var=var)
            else:
                store.append(X, obs, obsm)
        if store is None:
            raise ValueError("No cells to write: the chunks were empty.")
        store.write_uns(uns() if callable(uns) else uns)
        store.close()
        if (path.exists() or path.is_symlink()) and not overwrite:  # appeared while writing
            raise FileExistsError(f"out={str(out)!r} appeared while writing; pass overwrite=True to replace it.")
        _replace(partial, path)
    except BaseException:  # an error, or Ctrl-C: nothing is left that looks like a result
        if store is not None:
            store.close(complete=False)
        _remove(partial)
        raise
    return open_backed(path)


def open_backed(path: str | os.PathLike) -> AnnData:
    """An ``.h5ad`` or ``.zarr`` AnnData with ``X`` left on disk.

    ``.h5ad``: :func:`anndata.read_h5ad` with ``backed="r"``. ``.zarr``: ``X`` is the store's
    sparse dataset (:func:`anndata.io.sparse_dataset`: slicing reads only those rows), the rest is
    read into memory, as a backed h5ad does.
    """
    import anndata as ad

    path = Path(path)
    if path.suffix == ".h5ad":
        return ad.read_h5ad(path, backed="r")
    import zarr
    from anndata.experimental import read_dispatched

    def callback(read_func, elem_name: str, elem, iospec):
        if elem_name == "/X":
            return ad.io.sparse_dataset(elem)
        return read_func(elem)

    return read_dispatched(zarr.open_group(path, mode="r"), callback=callback)


class _Store:
    """An open AnnData store under construction: the first chunk written by anndata, then appends."""

    def __init__(self, path: Path, fmt: str, X, obs: pd.DataFrame, obsm: Mapping, *, var: pd.DataFrame) -> None:
        import anndata as ad
        from anndata.experimental import write_dispatched

        self.fmt = fmt
        if fmt == "h5ad":
            import h5py

            self.root = h5py.File(path, "w")
        else:
            import zarr

            self.root = zarr.open_group(path, mode="w", zarr_format=ad.settings.zarr_write_format)
        self.root.attrs.setdefault("encoding-type", "anndata")
        self.root.attrs.setdefault("encoding-version", "0.1.0")
        self.columns = list(obs.columns)
        self.categories = {k: v.cat.categories for k, v in obs.items() if isinstance(v.dtype, pd.CategoricalDtype)}
        self.obsm_keys = sorted(obsm)
        first = ad.AnnData(X=X, obs=obs, var=var, obsm=dict(obsm))
        write_dispatched(self.root, "/", first, callback=self._growable)

    def write_uns(self, uns: Mapping) -> None:
        """Replace the (empty) ``uns`` written with the first chunk."""
        import anndata as ad

        del self.root["uns"]
        ad.io.write_elem(self.root, "uns", dict(uns))

    def _growable(self, write_func, store, elem_name: str, elem, *, iospec, dataset_kwargs) -> None:
        """Write with anndata's writer; storage grows along the cells for X, obs columns and obsm."""
        where = f"{store.name.rstrip('/')}/{elem_name.strip('/')}"
        if where == "/raw" and elem is None:
            return  # as write_h5ad: a null raw would make a backed h5ad look for raw/X
        kwargs = dict(dataset_kwargs)
        if where == "/X":
            kwargs |= {"chunks": (ENTRIES_PER_STORAGE_CHUNK,), "indptr_dtype": np.dtype("int64")}
        elif (
            where.startswith(("/obs/", "/obsm/"))
            and not where.endswith("/categories")
            and isinstance(elem, np.ndarray)
            and elem.ndim >= 1
        ):
            kwargs["chunks"] = (ROWS_PER_STORAGE_CHUNK, *elem.shape[1:])
            if self.fmt == "h5ad":
                kwargs["maxshape"] = (None, *elem.shape[1:])
        write_func(store, elem_name, elem, dataset_kwargs=kwargs)

    def append(self, X, obs: pd.DataFrame, obsm: Mapping) -> None:
        import anndata as ad

        if list(obs.columns) != self.columns or sorted(obsm) != self.obsm_keys:
            raise ValueError(
                f"A chunk has obs columns {list(obs.columns)} and obsm {sorted(obsm)}; the first had "
                f"{self.columns} and {self.obsm_keys}: every chunk must have the same."
            )
        ad.io.sparse_dataset(self.root["X"]).append(sparse.csr_matrix(X))
        group = self.root["obs"]
        _append_rows(group[group.attrs["_index"]], _strings(obs.index))
        for key in self.columns:
            column = obs[key]
            if key in self.categories:
                if not column.cat.categories.equals(self.categories[key]):
                    raise ValueError(f"obs[{key!r}] has other categories than in the first chunk.")
                _append_rows(group[key]["codes"], column.cat.codes.to_numpy())
            elif column.dtype == object:
                _append_rows(group[key], _strings(column))
            else:
                _append_rows(group[key], column.to_numpy())
        for key in self.obsm_keys:
            _append_rows(self.root["obsm"][key], np.asarray(obsm[key]))

    def close(self, complete: bool = True) -> None:
        """Close the file; a complete zarr store gets consolidated metadata (as ``write_zarr`` writes)."""
        if self.root is None:
            return
        if self.fmt == "h5ad":
            self.root.close()
        elif complete:
            import zarr

            zarr.consolidate_metadata(self.root.store)
        self.root = None


def _append_rows(array, values: np.ndarray) -> None:
    if hasattr(array, "append"):  # zarr
        array.append(values, axis=0)
        return
    start = array.shape[0]
    array.resize(start + len(values), axis=0)
    array[start:] = values


def _strings(values) -> np.ndarray:
    """Strings as an object array: what h5py and zarr store as variable-length strings."""
    return np.asarray(pd.Index(values).astype(str), dtype=object)


def _regroup(chunks: Iterable[Chunk], size: int) -> Iterator[Chunk]:
    """The same cells in pieces of ``size`` (the last may be smaller); holds at most one piece and one chunk."""
    pending: list[Chunk] = []
    n_pending = 0
    for chunk in chunks:
        if chunk[0].shape[0] == 0:
            continue
        pending.append(chunk)
        n_pending += chunk[0].shape[0]
        if n_pending >= size:
            X, obs, obsm = _concat(pending)
            pending, start = [], 0  # the pieces are freed: the cells are held once, plus the piece written
            while n_pending - start >= size:
                yield _rows(X, obs, obsm, start, start + size)
                start += size
            pending = [_rows(X, obs, obsm, start, n_pending)] if start < n_pending else []
            n_pending -= start
    if pending:
        yield _concat(pending)


def _concat(pieces: list[Chunk]) -> Chunk:
    if len(pieces) == 1:
        return pieces[0]
    X = sparse.vstack([p[0] for p in pieces], format="csr")
    obs = pd.concat([p[1] for p in pieces])
    obsm = {k: np.concatenate([p[2][k] for p in pieces]) for k in pieces[0][2]}
    return X, obs, obsm


def _rows(X, obs: pd.DataFrame, obsm: Mapping, start: int, stop: int) -> Chunk:
    return X[start:stop], obs.iloc[start:stop], {k: v[start:stop] for k, v in obsm.items()}


def _replace(partial: Path, path: Path) -> None:
    """Move the finished ``partial`` to ``path``; an existing ``path`` is removed only after the move."""
    if not (path.exists() or path.is_symlink()):
        os.replace(partial, path)
        return
    if path.is_file() and partial.is_file():
        os.replace(partial, path)  # atomic
        return
    old = path.with_name(f"{path.name}.replaced-{os.getpid()}")
    _remove(old)
    os.replace(path, old)
    os.replace(partial, path)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
