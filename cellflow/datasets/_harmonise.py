"""Give the scPerturb files of the public screens cellflow's obs columns (those of the shared subsets).

scPerturb (Peidli et al. 2024) stores each screen with its own conventions: Norman 2019 joins a
combination's genes with ``"_"``, Papalexi 2021 labels cells by guide (``"STAT2g2"``) and keeps
the replicate in the hashtag (``hto``), sci-Plex 3 gives doses in nM in ``dose_value``. The
functions here turn those into the columns cellflow's loaders return, so the full files and the
small shared subsets can be used interchangeably (``cf.pp.setup(perturbation_key="perturbation",
control="control", dose_key="dose", ...)``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("cellflow")

CONTROL = "control"
#: Renamed genes: the perturbation keeps the current HGNC symbol, as the shared subset does.
NORMAN_GENE_ALIASES = {"KIAA1804": "MAP3K21"}
#: Guide targets named after the protein in the ECCITE screen, renamed to the gene.
PAPALEXI_GENE_ALIASES = {"PDL1": "CD274"}
#: The three treated biological replicates of the ECCITE screen, by hashtag, named as in the subset.
PAPALEXI_REPLICATES = {"rep1-tx": "rep_1", "rep3-tx": "rep_2", "rep4-tx": "rep_3"}
#: Labels of vehicle-treated cells in sci-Plex 3 (scPerturb already renamed ``"Vehicle"`` to ``"control"``).
SCIPLEX_CONTROLS = frozenset({CONTROL, "Vehicle", "DMSO"})

_NT_GUIDE = re.compile(r"^NT(g\d+)?$")
_GUIDE_SUFFIX = re.compile(r"g\d+$")


def harmonise_norman2019(adata: AnnData) -> AnnData:
    """Give scPerturb's ``NormanWeissman2019_filtered.h5ad`` the obs columns of the shared Norman subset.

    scPerturb joins the genes of a double activation with ``"_"`` (``"KLF1_MAP2K6"``) and calls
    cells with two negative-control guides ``"control"``. This writes:

    - ``perturbation`` and ``condition``: ``"control"``, ``"A"`` or ``"A+B"`` in scPerturb's
      gene order, renamed genes with their current symbol (``KIAA1804`` becomes ``MAP3K21``, as
      in the subset);
    - ``perturbation_raw``: the label before renaming genes, joined with ``"+"``;
    - ``dose``: ``"1"`` for controls and single activations, ``"1+1"`` for doubles (one dose per
      gene);
    - ``cell_type``, ``dataset``, ``perturbation_type``, ``treatment``, ``condition_cell_type``:
      ``"k562"``, ``"norman19"``, ``"CRISPRa"``, ``"none"``, ``"<perturbation>_k562"``.

    scPerturb's other columns (``guide_id``, ``cell_line``, ``ncounts``, ``ngenes``, ``nperts``,
    ``percent_mito``, ...) are kept. Cells without a perturbation label are dropped.

    Parameters
    ----------
    adata
        The scPerturb file (or an AnnData with the same ``obs.perturbation``); it is not modified.

    Returns
    -------
    A new AnnData with the harmonised obs.
    """
    return _apply(adata, norman2019_obs)


def harmonise_papalexi2021(adata: AnnData) -> AnnData:
    """Give scPerturb's ``PapalexiSatija2021_eccite_RNA.h5ad`` the obs columns of the shared Papalexi subset.

    scPerturb labels cells by their guide (``"STAT2g2"``, ``"control"`` for non-targeting guides)
    and keeps the strongest hashtag of each cell in ``hto``. This writes:

    - ``perturbation``: the targeted gene (the guide name without its ``g<number>`` suffix;
      ``PDL1`` guides target ``CD274``), or ``"control"`` for non-targeting guides;
    - ``guide``: the guide (scPerturb's ``guide_id`` or ``gdo``; the label itself if neither is
      there);
    - ``bio_rep``: ``"rep_1"``, ``"rep_2"``, ``"rep_3"`` for the hashtags ``rep1-tx``,
      ``rep3-tx``, ``rep4-tx`` of the screen's three treated replicates (sceptre's naming, that
      of the subset).

    scPerturb's other columns (``hto``, ``cell_line``, ``perturbation_type``, ``ncounts``, ...)
    are kept. Cells whose strongest hashtag is none of the three replicates (doublets, other
    samples) are dropped, as are cells without a label. The subset's ``guide_umi_max`` and
    ``guide_umi_total`` need the guide counts, which the file does not hold.

    Parameters
    ----------
    adata
        The scPerturb file (or an AnnData with ``obs.perturbation`` and ``obs.hto``); it is not
        modified.

    Returns
    -------
    A new AnnData with the harmonised obs.
    """
    return _apply(adata, papalexi2021_obs)


def harmonise_srivatsan2020(adata: AnnData) -> AnnData:
    """Give scPerturb's ``SrivatsanTrapnell2020_sciplex3.h5ad`` cellflow's obs columns, doses included.

    sci-Plex 3 treated A549, K562 and MCF7 cells with 188 compounds at 10 nM to 10 uM for 24 h.
    scPerturb keeps the compound in ``perturbation`` (``"control"`` for vehicle), the dose in
    ``dose_value`` with ``dose_unit == "nM"``, the line in ``cell_line``. This writes:

    - ``perturbation``: the compound, or ``"control"``; a ``"+"`` inside a name becomes
      ``"plus"`` (``"(+)-JQ1"`` is ``"(plus)-JQ1"``), since ``"+"`` joins the parts of a
      combination;
    - ``perturbation_raw``: the compound as scPerturb names it;
    - ``dose``: the dose in uM (``"0.01"``, ``"0.1"``, ``"1"``, ``"10"``; ``"0"`` for controls),
      so doses are of order one for a model; ``dose_value`` and ``dose_unit`` keep scPerturb's nM;
    - ``cell_type``: the cell line (``"A549"``, ``"K562"``, ``"MCF7"``), the context to
      condition on.

    ``replicate`` and ``time`` (hours) keep scPerturb's names, as do the other columns. Cells with
    no compound or no dose (hashes that could not be assigned to a well) are dropped.

    Parameters
    ----------
    adata
        The scPerturb file (or an AnnData with ``obs.perturbation``, ``obs.dose_value`` and
        ``obs.cell_line``); it is not modified.

    Returns
    -------
    A new AnnData with the harmonised obs.

    Raises
    ------
    ValueError
        ``obs.dose_unit`` says the doses are not in nM.
    """
    return _apply(adata, srivatsan2020_obs)


def norman2019_obs(obs: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The harmonised obs of :func:`harmonise_norman2019` and the mask of cells to keep."""
    _require(obs, ("perturbation",), "NormanWeissman2019_filtered.h5ad")
    parsed = _map_unique(obs["perturbation"], _norman_label)
    keep = parsed.notna().to_numpy()
    label = parsed.map(lambda p: p[0] if p else None)
    cell_type = "k562"
    columns = {
        "condition": label,
        "perturbation": label,
        "perturbation_type": "CRISPRa",
        "dataset": "norman19",
        "cell_type": cell_type,
        "treatment": "none",
        "dose": parsed.map(lambda p: p[2] if p else None),
        "perturbation_raw": parsed.map(lambda p: p[1] if p else None),
        "condition_cell_type": label.map(lambda s: None if s is None else f"{s}_{cell_type}"),
    }
    return _with_columns(obs, columns), keep


def papalexi2021_obs(obs: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The harmonised obs of :func:`harmonise_papalexi2021` and the mask of cells to keep."""
    _require(obs, ("perturbation", "hto"), "PapalexiSatija2021_eccite_RNA.h5ad")
    label = _map_unique(obs["perturbation"], _papalexi_label)
    guide_source = next((c for c in ("guide_id", "gdo") if c in obs.columns), "perturbation")
    guide = obs[guide_source].astype(object).where(obs[guide_source].notna(), None)
    bio_rep = obs["hto"].astype(object).map(lambda h: PAPALEXI_REPLICATES.get(str(h).strip()))
    keep = (label.notna() & bio_rep.notna()).to_numpy()
    if not keep.any():
        found = sorted(map(str, pd.unique(obs["hto"].dropna())))[:10]
        raise ValueError(
            f"No cell of obs['hto'] is one of the replicate hashtags {sorted(PAPALEXI_REPLICATES)} "
            f"(found {found}); is this scPerturb's PapalexiSatija2021_eccite_RNA.h5ad?"
        )
    columns = {"perturbation": label, "guide": guide, "bio_rep": bio_rep}
    return _with_columns(obs, columns), keep


def srivatsan2020_obs(obs: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The harmonised obs of :func:`harmonise_srivatsan2020` and the mask of cells to keep."""
    _require(obs, ("perturbation", "dose_value", "cell_line"), "SrivatsanTrapnell2020_sciplex3.h5ad")
    if "dose_unit" in obs.columns:
        units = set(map(str, pd.unique(obs["dose_unit"].dropna())))
        if units - {"nM"}:
            raise ValueError(f"obs['dose_unit'] holds {sorted(units)}; the sci-Plex 3 doses are expected in nM.")
    label = _map_unique(obs["perturbation"], _sciplex_label)
    dose_nm = pd.to_numeric(obs["dose_value"], errors="coerce")
    is_control = label == CONTROL
    dose = (dose_nm / 1000.0).map(lambda v: None if pd.isna(v) or v < 0 else f"{v:g}").astype(object)
    dose = dose.where(~is_control, "0")
    cell_line = obs["cell_line"].astype(object).where(obs["cell_line"].notna(), None)
    keep = (label.notna() & dose.notna() & cell_line.notna()).to_numpy()
    raw = obs["perturbation"].astype(object).where(obs["perturbation"].notna(), None)
    columns = {"perturbation": label, "perturbation_raw": raw, "dose": dose, "cell_type": cell_line}
    return _with_columns(obs, columns), keep


def _norman_label(raw: str) -> tuple[str, str, str] | None:
    """(label with current gene symbols, label as given joined by "+", dose) of one scPerturb label."""
    tokens = [t.strip() for t in re.split(r"[_+]", raw)]
    if any(not t for t in tokens):
        raise ValueError(f"Perturbation label {raw!r} has an empty gene (a separator at an end or doubled).")
    genes = [t for t in tokens if t != CONTROL and not t.startswith("NegCtrl")]
    if not genes:
        return CONTROL, CONTROL, "1"
    label = "+".join(NORMAN_GENE_ALIASES.get(g, g) for g in genes)
    return label, "+".join(genes), "+".join(["1"] * len(genes))


def _papalexi_label(raw: str) -> str:
    if raw == CONTROL or _NT_GUIDE.match(raw):
        return CONTROL
    target = _GUIDE_SUFFIX.sub("", raw)
    return PAPALEXI_GENE_ALIASES.get(target, target)


def _sciplex_label(raw: str) -> str:
    return CONTROL if raw in SCIPLEX_CONTROLS else raw.replace("+", "plus")


def _map_unique(values: pd.Series, parse: Callable[[str], object]) -> pd.Series:
    """``parse`` applied to each distinct non-empty label once (fast for many cells); ``None`` where missing."""
    as_text = values.astype(object).where(values.notna(), None).map(lambda v: None if v is None else str(v).strip())
    as_text = as_text.map(lambda v: None if v in (None, "", "nan", "None") else v)
    parsed = {v: parse(v) for v in pd.unique(as_text.dropna())}
    return as_text.map(lambda v: None if v is None else parsed[v]).astype(object)


def _with_columns(obs: pd.DataFrame, columns: dict) -> pd.DataFrame:
    """A copy of ``obs`` with the harmonised columns first (categorical text), the others after."""
    new = pd.DataFrame(index=obs.index)
    for name, value in columns.items():
        series = value if isinstance(value, pd.Series) else pd.Series(value, index=obs.index)
        new[name] = pd.Categorical(series.astype(object).where(series.notna(), None))
    rest = obs.drop(columns=[c for c in columns if c in obs.columns])
    return pd.concat([new, rest], axis=1)


def _require(obs: pd.DataFrame, names: tuple[str, ...], source: str) -> None:
    missing = [n for n in names if n not in obs.columns]
    if missing:
        raise ValueError(
            f"obs has no column {missing}; this function expects scPerturb's {source} "
            f"(obs columns found: {list(obs.columns)[:15]})."
        )


def _apply(adata: AnnData, harmonise_obs: Callable[[pd.DataFrame], tuple[pd.DataFrame, np.ndarray]]) -> AnnData:
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData, got {type(adata).__name__}.")
    obs, keep = harmonise_obs(adata.obs)
    if not keep.all():
        logger.info("Dropped %d of %d cells that cannot be labelled.", int((~keep).sum()), len(keep))
    out = adata[keep].copy() if not keep.all() else adata.copy()
    out.obs = obs.loc[keep]
    return out
