"""Checkpoints of a :class:`~cellflow.CellFlow`: weights as safetensors, everything else as JSON, never pickle.

Everything generation needs is in the checkpoint: the architecture, the registration, the
vocabularies, the VAE, the flow module (condition encoder, backbone, token shifts, library
shifts, gene offsets, control reference with the control cells' posterior sds) and how the flow
was trained (reflowed, distilled, with a null condition). The training log (``history``) is saved for the
record only.

A checkpoint cannot silently disagree with itself:

- the weights are written to a new file named after their content, and ``config.json`` is
  replaced in one atomic rename that commits the save; a save interrupted at any point leaves
  the previous model loadable (an unreferenced weights file at most);
- ``config.json`` records the weights file's size and SHA-256, and the weights file records
  the SHA-256 of everything in ``config.json`` that the weights are only meaningful with
  (genes, tokens, contexts, architecture, ...): editing either side, or pairing files of two
  saves, is refused on load;
- ``config.json`` is checked key by key: missing, unknown or mistyped keys are named. Only the
  training log (``history``) and the version that wrote it are not bound to the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from .. import __version__
from ..flow import ControlReference, GeneOffsets, SamplingInfo, TokenShifts
from ..pp._codec import ConditionCodec
from ..pp._setup import SetupConfig
from ..train import FlowTrainingConfig
from ..vae import LatentVAE, VAEConfig
from ._build import build_flow_module, embedding_hint
from ._config import CellFlowConfig

FORMAT_VERSION = 5  # 4: library shifts and the control cells' posterior sds; 5: gene offsets
CONFIG_FILE = "config.json"
ADDED_LATER = frozenset({"combination_offsets"})
"""Configuration fields newer than the format: older checkpoints of the format lack them and mean their defaults.

(An older cellflow refuses a newer checkpoint with these fields as unknown keys, named in its error.)
"""
_WEIGHTS_NAME = re.compile(r"weights-[0-9a-f]{16}\.safetensors")
_PARTS = ("vae", "encoder", "backbone", "reference", "shift", "library_shift", "gene_offset")
# config.json: key -> type of its value (None allowed where the tuple holds type(None)).
_SCHEMA = {
    "format": str,
    "format_version": int,
    "cellflow_version": str,
    "weights": dict,
    "model": dict,
    "setup": dict,
    "vae": dict,
    "tokens": list,
    "covariate_categories": dict,
    "genes": list,
    "token_features_shape": (list, type(None)),
    "dose_range": list,
    "contexts": list,
    "batch_categories": list,
    "sampling": dict,
    "flow_training": (dict, type(None)),
    "history": dict,
}
# What the weights mean nothing without; its hash is stored inside the weights file.
_BOUND_TO_WEIGHTS = (
    "flow_training",
    "model",
    "setup",
    "vae",
    "tokens",
    "covariate_categories",
    "genes",
    "token_features_shape",
    "dose_range",
    "contexts",
    "batch_categories",
    "sampling",
)


class CheckpointError(ValueError):
    """A saved model that cannot be loaded as it is: damaged, edited, incomplete or from another format."""


def save_model(model, path: Path, *, overwrite: bool = False) -> None:
    """Write ``model`` to the directory ``path`` (refusing to replace a saved model unless ``overwrite``)."""
    from safetensors.torch import save_file

    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file; give a directory to save the model in.")
    if (path / CONFIG_FILE).exists() and not overwrite:
        raise FileExistsError(f"{path} already holds a model; pass overwrite=True to replace it.")
    path.mkdir(parents=True, exist_ok=True)
    meta = _metadata(model)
    tmp = path / f".weights-{uuid.uuid4().hex}.tmp"
    try:
        save_file(_tensors(model), str(tmp), metadata={"cellflow_config_sha256": _bound_hash(meta)})
        fsync(tmp)
        digest, size = sha256(tmp), tmp.stat().st_size
        weights = path / f"weights-{digest[:16]}.safetensors"
        os.replace(tmp, weights)
    finally:
        tmp.unlink(missing_ok=True)
    meta["weights"] = {"file": weights.name, "sha256": digest, "bytes": size}
    _fsync_folder(path)  # the new weights' name is on disk before config.json points to it
    write_atomically(path / CONFIG_FILE, json.dumps(meta, indent=1).encode())  # the commit
    _fsync_folder(path)
    # Weights of earlier saves are unreferenced now; read config.json again: a concurrent save may have won.
    referenced = json.loads((path / CONFIG_FILE).read_text()).get("weights", {}).get("file")
    for old in path.glob("weights-*.safetensors"):
        if old.name not in (referenced, weights.name):
            old.unlink(missing_ok=True)


def load_model(cls, path: Path):
    """Rebuild a model of class ``cls`` from the directory ``path`` written by :func:`save_model`."""
    meta = _read_config(path)
    tensors = _read_weights(path, meta)
    parts = {p: {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(p + ".")} for p in _PARTS}
    setup = SetupConfig.from_uns(meta["setup"])
    config = CellFlowConfig(**_fields(meta, "model", CellFlowConfig, path))
    vae_config = VAEConfig(**_fields(meta, "vae", VAEConfig, path))
    sampling = SamplingInfo(**_fields(meta, "sampling", SamplingInfo, path))
    flow_training = None
    if meta["flow_training"] is not None:
        flow_training = FlowTrainingConfig(**_fields(meta, "flow_training", FlowTrainingConfig, path))
    _check_sizes(meta, vae_config, path)
    codec = ConditionCodec(meta["tokens"], meta["covariate_categories"], embedding_hint(config.token_embedding))
    shape = meta["token_features_shape"]
    features = None if shape is None else np.zeros(shape)
    cardinalities = [len(v) for v in codec.covariate_categories.values()]
    module = build_flow_module(config, setup, len(codec.tokens), cardinalities, features)
    try:
        module.encoder.load_state_dict(parts["encoder"], strict=True)
        module.backbone.load_state_dict(parts["backbone"], strict=True)
        vae = LatentVAE.from_state_dict(parts["vae"], vae_config)
        reference = ControlReference.from_tensors(parts["reference"], [tuple(c) for c in meta["contexts"]])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(f"{path}: the weights do not fit the configuration ({error}).") from None
    module.eval()
    module.set_reference(reference)
    module.shifts = TokenShifts.from_tensors(parts["shift"]) if parts["shift"] else None
    if config.source_shift != "none" and module.shifts is None:
        raise CheckpointError(f"{path}: the token shifts its configuration uses are missing from the weights.")
    if not parts["library_shift"] or reference.latent_scale is None:
        raise CheckpointError(f"{path}: the library shifts or the control cells' posterior sds are missing.")
    module.library_shifts = TokenShifts.from_tensors(parts["library_shift"])
    if config.gene_offsets and not parts["gene_offset"]:
        raise CheckpointError(f"{path}: the gene offsets its configuration uses are missing from the weights.")
    module.gene_offsets = GeneOffsets.from_tensors(parts["gene_offset"]) if config.gene_offsets else None
    module.sampling = sampling
    model = cls.__new__(cls)
    model._set_parts(config, setup, codec, module, genes=meta["genes"])
    model.token_features_shape = shape
    model.dose_range = tuple(float(d) for d in meta["dose_range"])
    model.vae = vae
    model.batch_categories = meta["batch_categories"]
    model.flow_config = flow_training
    model.history = meta["history"]
    return model


def _tensors(model) -> dict:
    module = model.module
    tensors = {f"vae.{k}": v for k, v in model.vae.state_dict().items()}
    tensors |= {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in module.encoder.state_dict().items()}
    tensors |= {f"backbone.{k}": v.detach().cpu().contiguous() for k, v in module.backbone.state_dict().items()}
    tensors |= {f"reference.{k}": v for k, v in module.reference.tensors().items()}
    if module.shifts is not None:
        tensors |= {f"shift.{k}": v for k, v in module.shifts.tensors().items()}
    tensors |= {f"library_shift.{k}": v for k, v in module.library_shifts.tensors().items()}
    if module.gene_offsets is not None:
        tensors |= {f"gene_offset.{k}": v for k, v in module.gene_offsets.tensors().items()}
    return tensors


def _metadata(model) -> dict:
    module = model.module
    return {
        "format": "cellflow",
        "format_version": FORMAT_VERSION,
        "cellflow_version": __version__,
        "weights": {},
        "model": asdict(model.config),
        "setup": model.setup.to_uns(),
        "vae": model.vae.config_dict(),
        "tokens": list(model.codec.tokens),
        "covariate_categories": model.codec.covariate_categories,
        "genes": list(model.genes),
        "token_features_shape": model.token_features_shape,
        "dose_range": list(model.dose_range),
        "contexts": [list(c) for c in module.reference.contexts],
        "batch_categories": list(model.batch_categories),
        "sampling": asdict(module.sampling),
        "flow_training": None if model.flow_config is None else asdict(model.flow_config),
        "history": model.history,
    }


def _bound_hash(meta: dict) -> str:
    canonical = json.dumps({k: meta[k] for k in _BOUND_TO_WEIGHTS}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _read_config(path: Path) -> dict:
    if not (path / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{path} has no {CONFIG_FILE}; is it a directory saved by model.save?")
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path / CONFIG_FILE} is not valid JSON ({error}); the file is damaged.") from None
    if not isinstance(meta, dict) or meta.get("format") != "cellflow":
        raise CheckpointError(f"{path / CONFIG_FILE} is not a cellflow model configuration.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} holds format version {meta.get('format_version')!r}; this cellflow ({__version__}) reads "
            f"version {FORMAT_VERSION}. Save the model again with the cellflow that trained it, or retrain it."
        )
    missing, unknown = sorted(set(_SCHEMA) - set(meta)), sorted(set(meta) - set(_SCHEMA))
    if missing or unknown:
        raise CheckpointError(f"{path / CONFIG_FILE}: missing keys {missing}, unknown keys {unknown}.")
    wrong = [k for k, kind in _SCHEMA.items() if not isinstance(meta[k], kind) or isinstance(meta[k], bool)]
    if wrong:
        raise CheckpointError(f"{path / CONFIG_FILE}: keys {wrong} do not hold the expected types.")
    return meta


def _read_weights(path: Path, meta: dict) -> dict:
    from safetensors import SafetensorError, safe_open

    entry = meta["weights"]
    if set(entry) != {"file", "sha256", "bytes"} or not _WEIGHTS_NAME.fullmatch(str(entry["file"])):
        raise CheckpointError(f"{path / CONFIG_FILE}: 'weights' must name the weights file, its sha256 and size.")
    weights = path / entry["file"]
    if not weights.exists():
        raise CheckpointError(f"{path}: the weights file {entry['file']} named in {CONFIG_FILE} is missing.")
    if weights.stat().st_size != entry["bytes"] or sha256(weights) != entry["sha256"]:
        raise CheckpointError(
            f"{weights} is not the file {CONFIG_FILE} was saved with (truncated, changed or replaced); "
            "the checkpoint is damaged: save the model again."
        )
    try:
        with safe_open(str(weights), framework="pt") as handle:
            bound = (handle.metadata() or {}).get("cellflow_config_sha256")
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{weights} cannot be read as safetensors ({error}); the file is damaged.") from None
    if bound != _bound_hash(meta):
        raise CheckpointError(
            f"{path / CONFIG_FILE} does not describe these weights (it was edited, or the files come from different "
            "saves): genes, tokens, contexts and architecture must be exactly as saved."
        )
    return tensors


def _fields(meta: dict, key: str, cls, path: Path) -> dict:
    """``meta[key]`` as keyword arguments of the dataclass ``cls``, with missing or unknown keys named.

    Only the fields of :data:`ADDED_LATER` may be absent (their defaults are what older checkpoints meant).
    """
    entry, names = meta[key], {f.name for f in fields(cls)}
    missing = sorted(f.name for f in fields(cls) if f.name not in entry and f.init and f.name not in ADDED_LATER)
    unknown = sorted(set(entry) - names)
    if unknown or missing:
        raise CheckpointError(f"{path / CONFIG_FILE}: '{key}' lacks {missing} or has unknown keys {unknown}.")
    return entry


def _check_sizes(meta: dict, vae: VAEConfig, path: Path) -> None:
    if vae.n_input != len(meta["genes"]) or len(set(meta["genes"])) != len(meta["genes"]):
        raise CheckpointError(f"{path}: {len(meta['genes'])} genes listed for a VAE of {vae.n_input} (or duplicated).")


def sha256(file: Path) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync(file: Path) -> None:
    """Flush a file to the disk."""
    with open(file, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(path: Path) -> None:
    """Flush a folder's entries (renames) to the disk, where the platform allows it."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place (readers see old or new, never half)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
