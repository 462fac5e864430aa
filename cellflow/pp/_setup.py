"""``cf.pp.setup``: validate an AnnData and record how cellflow should read it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._constants import MIN_CONTROL_CELLS, UNS_KEY
from ._conditions import Condition, parse_condition

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("cellflow")


@dataclass(frozen=True)
class SetupConfig:
    """How cellflow reads an AnnData (what :func:`setup` records in ``adata.uns["cellflow"]``)."""

    perturbation_key: str
    control: str
    covariate_keys: tuple[str, ...] = ()
    dose_key: str | None = None
    time_key: str | None = None
    layer: str | None = None
    combo_sep: str = "+"
    counts: bool = True
    conditions: tuple[str, ...] = field(default=(), compare=False)
    tokens: tuple[str, ...] = field(default=(), compare=False)

    def to_uns(self) -> dict:
        """A dict that h5ad can store (no ``None`` values: absent keys stand for them)."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}
        return out

    @classmethod
    def from_uns(cls, entry: dict) -> SetupConfig:
        """Rebuild the config from ``adata.uns["cellflow"]`` (as written, or read back from h5ad)."""
        kwargs = {}
        for name in cls.__dataclass_fields__:
            if name not in entry:
                continue
            value = entry[name]
            if name in ("covariate_keys", "conditions", "tokens"):
                value = tuple(str(v) for v in np.atleast_1d(value)) if len(np.atleast_1d(value)) else ()
            elif name == "counts":
                value = bool(value)
            else:
                value = str(value)
            kwargs[name] = value
        return cls(**kwargs)


def setup(
    adata: AnnData,
    *,
    perturbation_key: str,
    control: str,
    covariate_keys: Sequence[str] = (),
    dose_key: str | None = None,
    time_key: str | None = None,
    layer: str | None = None,
    combo_sep: str = "+",
    counts: bool = True,
) -> None:
    """Check an AnnData of a perturbation screen and record how cellflow should read it.

    Every check runs before anything is written, and nothing but ``adata.uns["cellflow"]``
    is changed: ``X``, ``layers`` and ``obs`` stay as they are.

    Parameters
    ----------
    adata
        Cells x genes.
    perturbation_key
        Column of ``adata.obs`` with perturbation labels: the control label, ``"A"``, or a
        combination ``"A+B"`` (order does not matter, any number of tokens).
    control
        The label of control cells in ``adata.obs[perturbation_key]``.
    covariate_keys
        Categorical columns of ``adata.obs`` that define a cell's context (cell type or line,
        batch). Control cells of the same context are the source of the flow.
    dose_key
        Optional column of doses aligned with the tokens (``"1+0.5"``), or one number per cell.
    time_key
        Optional numeric column of experimental time (hours, days) after perturbation.
    layer
        Layer holding the expression to model; ``None`` uses ``adata.X``.
    combo_sep
        Separator of the tokens of a combination.
    counts
        Whether the data are raw counts (needed by the negative binomial and zero-inflated
        likelihoods). Set ``False`` for log-normalised data and use ``likelihood="normal"``.

    Returns
    -------
    ``None``. Adds ``adata.uns["cellflow"]``: the options above plus the canonical
    condition labels and perturbation tokens found.

    Raises
    ------
    KeyError
        A column or layer that does not exist.
    ValueError
        Too few or no control cells, empty labels, doses that do not match their tokens,
        missing covariate values, non-numeric time, duplicated gene names, and expression
        values that are NaN, infinite, negative, or (with ``counts=True``) not integers.

    Examples
    --------
    >>> import cellflow as cf
    >>> adata = cf.datasets.simulate_perturbseq(n_cells=500, seed=0)
    >>> cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    """
    covariate_keys = (covariate_keys,) if isinstance(covariate_keys, str) else tuple(covariate_keys)
    obs = adata.obs
    _check_columns(obs, perturbation_key, covariate_keys, dose_key, time_key)
    matrix = _get_matrix(adata, layer)
    _check_genes(adata)
    _check_values(matrix, counts=counts, where=f"adata.layers[{layer!r}]" if layer else "adata.X")

    conditions = parse_obs_conditions(
        obs, perturbation_key=perturbation_key, control=control, dose_key=dose_key, sep=combo_sep
    )
    n_control = int(sum(c.is_control for c in conditions))
    if n_control == 0:
        found = ", ".join(map(repr, pd.unique(obs[perturbation_key].astype(str))[:8]))
        raise ValueError(
            f"No control cells: no value of adata.obs[{perturbation_key!r}] equals control={control!r}. "
            f"Values found include {found}. Pass the label your control cells carry."
        )
    if n_control < MIN_CONTROL_CELLS:
        raise ValueError(
            f"Only {n_control} control cell(s) labelled {control!r}; cellflow needs at least {MIN_CONTROL_CELLS} "
            "to describe the unperturbed state."
        )
    for key in covariate_keys:
        if obs[key].isna().any():
            raise ValueError(f"adata.obs[{key!r}] has missing values; fill them or drop those cells before setup.")
    if time_key is not None:
        _check_time(obs[time_key], time_key)

    config = SetupConfig(
        perturbation_key=perturbation_key,
        control=control,
        covariate_keys=covariate_keys,
        dose_key=dose_key,
        time_key=time_key,
        layer=layer,
        combo_sep=combo_sep,
        counts=counts,
        conditions=tuple(sorted({c.label(control, combo_sep) for c in conditions})),
        tokens=tuple(sorted({t for c in conditions for t in c.tokens})),
    )
    adata.uns[UNS_KEY] = config.to_uns()
    logger.info("added 'cellflow' (adata.uns): %d conditions, %d tokens", len(config.conditions), len(config.tokens))


def get_setup(adata: AnnData) -> SetupConfig:
    """The setup recorded by :func:`setup`, or a clear error when it is missing."""
    if UNS_KEY not in adata.uns:
        raise KeyError(
            f"Did not find adata.uns[{UNS_KEY!r}]. Run cf.pp.setup(adata, perturbation_key=..., control=...) first."
        )
    return SetupConfig.from_uns(adata.uns[UNS_KEY])


def parse_obs_conditions(
    obs: pd.DataFrame, *, perturbation_key: str, control: str, dose_key: str | None = None, sep: str = "+"
) -> list[Condition]:
    """Parse every cell's perturbation (and dose) into a :class:`Condition`, one per row of ``obs``.

    Each distinct (label, dose) pair is parsed once, so this is fast for millions of cells.
    """
    labels = obs[perturbation_key]
    if labels.isna().any():
        raise ValueError(
            f"adata.obs[{perturbation_key!r}] has missing labels; label every cell ({control!r} for controls)."
        )
    labels = labels.astype(str).to_numpy()
    doses = obs[dose_key].astype(str).to_numpy() if dose_key is not None else np.full(len(labels), "", dtype=object)
    if dose_key is not None and obs[dose_key].isna().any():
        raise ValueError(f"adata.obs[{dose_key!r}] has missing doses; give every perturbed cell a dose.")
    pairs = pd.MultiIndex.from_arrays([labels, doses])
    codes, uniques = pd.factorize(pairs)
    parsed = [
        parse_condition(label, control=control, sep=sep, dose=(dose if dose_key is not None else None))
        for label, dose in uniques
    ]
    return [parsed[i] for i in codes]


def setup_conditions(adata: AnnData, setup: SetupConfig) -> list[Condition]:
    """Every cell's :class:`Condition`, read as ``setup`` (from :func:`get_setup`) says."""
    return parse_obs_conditions(
        adata.obs,
        perturbation_key=setup.perturbation_key,
        control=setup.control,
        dose_key=setup.dose_key,
        sep=setup.combo_sep,
    )


def _check_columns(obs: pd.DataFrame, perturbation_key: str, covariate_keys, dose_key, time_key) -> None:
    wanted = [("perturbation_key", perturbation_key)] + [("covariate_keys", k) for k in covariate_keys]
    wanted += [(name, key) for name, key in (("dose_key", dose_key), ("time_key", time_key)) if key is not None]
    for option, key in wanted:
        if key not in obs.columns:
            raise KeyError(
                f"{option}={key!r} is not a column of adata.obs. Available columns: {', '.join(map(str, obs.columns))}."
            )
    if perturbation_key in covariate_keys:
        raise ValueError(f"{perturbation_key!r} is the perturbation_key; it cannot also be a covariate.")


def _get_matrix(adata: AnnData, layer: str | None):
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"layer={layer!r} is not in adata.layers (has: {', '.join(adata.layers.keys()) or 'none'}).")
    return adata.layers[layer]


def _check_genes(adata: AnnData) -> None:
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(f"Gene names are duplicated (e.g. {dup}); run adata.var_names_make_unique() first.")


def _check_values(matrix, *, counts: bool, where: str) -> None:
    """Check expression values chunk by chunk, so dense and backed data never get copied whole."""
    import scipy.sparse as sp

    if matrix is None:
        raise ValueError(f"{where} is empty (None); put the expression matrix there.")
    n_rows = matrix.shape[0]
    step = max(1, 2_000_000 // max(1, matrix.shape[1]))
    for start in range(0, n_rows, step):
        chunk = matrix[start : start + step]
        values = chunk.data if sp.issparse(chunk) else np.asarray(chunk)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{where} contains NaN or infinite values; remove or impute them before setup.")
        if counts and values.size and values.min() < 0:
            raise ValueError(
                f"{where} contains negative values but counts=True. Pass the raw counts (e.g. layer='counts'), "
                "or counts=False for log-normalised data."
            )
        if counts and not np.array_equal(values, np.round(values)):
            raise ValueError(
                f"{where} holds non-integer values but counts=True expects raw counts. Pass the raw counts "
                "(e.g. layer='counts'), or counts=False with likelihood='normal' for normalised data."
            )


def _check_time(column: pd.Series, time_key: str) -> None:
    values = pd.to_numeric(column, errors="coerce")
    if values.isna().any() or not np.all(np.isfinite(values.to_numpy(dtype=float))):
        raise ValueError(
            f"adata.obs[{time_key!r}] must be numeric and finite for every cell (time after perturbation)."
        )
