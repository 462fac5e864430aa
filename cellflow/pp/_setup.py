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
from ._expression import INTEGER_SAMPLE, MAX_COUNT, check_expression  # noqa: F401 - part of this module's API

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
    TypeError
        ``adata`` that is not an AnnData, options of the wrong type (keys and labels must be
        strings, ``counts`` a bool), and expression that is not numeric.
    KeyError
        A column or layer that does not exist.
    ValueError
        An AnnData with no cells or no genes, too few or no control cells, empty labels (or labels
        with NUL characters, which pandas cannot tell apart), doses
        that do not match their tokens, missing covariate values, non-numeric time, duplicated
        gene names, and expression values that are NaN, infinite, all zero, or (with
        ``counts=True``) negative, not integers, or above :data:`MAX_COUNT` (``1e9``) in one entry.

    Examples
    --------
    >>> import cellflow as cf
    >>> adata = cf.datasets.simulate_perturbseq(n_cells=500, seed=0)
    >>> cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    """
    covariate_keys = _check_options(
        adata,
        perturbation_key=perturbation_key,
        control=control,
        covariate_keys=covariate_keys,
        dose_key=dose_key,
        time_key=time_key,
        layer=layer,
        combo_sep=combo_sep,
        counts=counts,
    )
    obs = adata.obs
    _check_columns(obs, perturbation_key, covariate_keys, dose_key, time_key)
    matrix = _get_matrix(adata, layer)
    _check_genes(adata)
    where = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
    if not check_expression(matrix, counts=counts, where=where):
        raise ValueError(
            f"{where} holds only zeros: there is no expression to model. Pass the layer that holds the "
            "expression (layer=...)."
        )

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
        _check_no_nul(obs[key].astype(str).to_numpy(), key)
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
        counts=bool(counts),
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
    if len(labels) == 0:
        return []
    labels = labels.astype(str).to_numpy()
    _check_no_nul(labels, perturbation_key)
    doses = obs[dose_key].astype(str).to_numpy() if dose_key is not None else np.full(len(labels), "", dtype=object)
    if dose_key is not None and obs[dose_key].isna().any():
        raise ValueError(f"adata.obs[{dose_key!r}] has missing doses; give every perturbed cell a dose.")
    if dose_key is not None:
        _check_no_nul(doses, dose_key)
    pairs = pd.MultiIndex.from_arrays([labels, doses])
    codes, uniques = pd.factorize(pairs)
    parsed = [
        _parse_cell(label, dose, control=control, sep=sep, perturbation_key=perturbation_key, dose_key=dose_key)
        for label, dose in uniques
    ]
    return [parsed[i] for i in codes]


def _check_no_nul(values: np.ndarray, key: str) -> None:
    """Refuse NUL characters: pandas' string hashing stops at them, so it would take ``A<NUL>+`` for ``A<NUL>``."""
    if "\x00" in "".join(values):  # one pass in C, fast for millions of cells
        raise ValueError(
            f"adata.obs[{key!r}] holds values with NUL characters ('\\x00'); remove them (e.g. "
            f"adata.obs[{key!r}] = adata.obs[{key!r}].astype(str).str.replace('\\x00', ''))."
        )


def _parse_cell(label: str, dose: str, *, control: str, sep: str, perturbation_key: str, dose_key: str | None):
    """Parse one (label, dose) pair; an error names the column of ``adata.obs`` that holds the culprit."""
    try:
        condition = parse_condition(label, control=control, sep=sep)
    except ValueError as err:
        raise ValueError(f"adata.obs[{perturbation_key!r}]: {err}") from None
    if dose_key is None:
        return condition
    try:
        return parse_condition(label, control=control, sep=sep, dose=dose)
    except ValueError as err:
        raise ValueError(f"adata.obs[{dose_key!r}]: {err}") from None


def setup_conditions(adata: AnnData, setup: SetupConfig) -> list[Condition]:
    """Every cell's :class:`Condition`, read as ``setup`` (from :func:`get_setup`) says."""
    return parse_obs_conditions(
        adata.obs,
        perturbation_key=setup.perturbation_key,
        control=setup.control,
        dose_key=setup.dose_key,
        sep=setup.combo_sep,
    )


def _check_options(adata, *, perturbation_key, control, covariate_keys, dose_key, time_key, layer, combo_sep, counts):
    """Types and shape of :func:`setup`'s arguments; returns ``covariate_keys`` as a tuple."""
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData (cells x genes), got {type(adata).__name__}.")
    for name, value in (("perturbation_key", perturbation_key), ("control", control)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {value!r} ({type(value).__name__}).")
    if not control.strip():
        raise ValueError(f"control={control!r} is empty; pass the label your control cells carry.")
    for name, value in (("dose_key", dose_key), ("time_key", time_key), ("layer", layer)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None, got {value!r} ({type(value).__name__}).")
    if covariate_keys is None:
        covariate_keys = ()
    covariate_keys = (covariate_keys,) if isinstance(covariate_keys, str) else tuple(covariate_keys)
    for key in covariate_keys:
        if not isinstance(key, str):
            raise TypeError(f"covariate_keys must be column names (strings), got {key!r} ({type(key).__name__}).")
    if len(set(covariate_keys)) != len(covariate_keys):
        raise ValueError(f"covariate_keys={list(covariate_keys)} names a column twice; give each column once.")
    if not isinstance(combo_sep, str) or not combo_sep:
        raise ValueError(f"combo_sep={combo_sep!r} must be a non-empty string, such as '+'.")
    if not isinstance(counts, bool | np.bool_):
        raise TypeError(f"counts must be True (raw counts) or False (normalised data), got {counts!r}.")
    if adata.n_obs == 0:
        raise ValueError("adata has 0 cells; setup needs the cells of a screen (control and perturbed cells).")
    if adata.n_vars == 0:
        raise ValueError("adata has 0 genes; setup needs the expression of the genes to model.")
    return covariate_keys


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


def _check_time(column: pd.Series, time_key: str) -> None:
    values = pd.to_numeric(column, errors="coerce")
    if values.isna().any() or not np.all(np.isfinite(values.to_numpy(dtype=float))):
        raise ValueError(
            f"adata.obs[{time_key!r}] must be numeric and finite for every cell (time after perturbation)."
        )
