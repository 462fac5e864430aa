"""Checkpoints of a :class:`~cellflow.CellFlow`: weights as safetensors, everything else as JSON, never pickle.

Everything generation needs is in the checkpoint: the architecture, the registration, the
vocabularies, the VAE, the flow module (condition encoder, backbone, token shifts, control
reference) and how the flow was trained (reflowed, distilled, with a null condition). The
training log (``history``) is saved for the record only.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..flow import ControlReference, SamplingInfo, TokenShifts
from ..pp._codec import ConditionCodec
from ..pp._setup import SetupConfig
from ..train import FlowTrainingConfig
from ..vae import LatentVAE, VAEConfig
from ._build import build_flow_module, embedding_hint
from ._config import CellFlowConfig

FORMAT_VERSION = 2
CONFIG_FILE, WEIGHTS_FILE = "config.json", "weights.safetensors"
_PARTS = ("vae", "encoder", "backbone", "reference", "shift")


def save_model(model, path: Path, *, overwrite: bool = False) -> None:
    """Write ``model`` to the directory ``path`` (refusing to replace a saved model unless ``overwrite``)."""
    from safetensors.torch import save_file

    if (path / CONFIG_FILE).exists() and not overwrite:
        raise FileExistsError(f"{path} already holds a model; pass overwrite=True to replace it.")
    path.mkdir(parents=True, exist_ok=True)
    module = model.module
    tensors = {f"vae.{k}": v for k, v in model.vae.state_dict().items()}
    tensors |= {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in module.encoder.state_dict().items()}
    tensors |= {f"backbone.{k}": v.detach().cpu().contiguous() for k, v in module.backbone.state_dict().items()}
    tensors |= {f"reference.{k}": v for k, v in module.reference.tensors().items()}
    if module.shifts is not None:
        tensors |= {f"shift.{k}": v for k, v in module.shifts.tensors().items()}
    save_file(tensors, str(path / WEIGHTS_FILE))
    meta = {
        "format": "cellflow",
        "format_version": FORMAT_VERSION,
        "model": asdict(model.config),
        "setup": model.setup.to_uns(),
        "vae": model.vae.config_dict(),
        "tokens": model.codec.tokens,
        "covariate_categories": model.codec.covariate_categories,
        "genes": model.genes,
        "token_features_shape": model.token_features_shape,
        "contexts": [list(c) for c in module.reference.contexts],
        "batch_categories": model.batch_categories,
        "sampling": asdict(module.sampling),
        "flow_training": None if model.flow_config is None else asdict(model.flow_config),
        "history": model.history,
    }
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=1))


def load_model(cls, path: Path):
    """Rebuild a model of class ``cls`` from the directory ``path`` written by :func:`save_model`."""
    from safetensors.torch import load_file

    if not (path / CONFIG_FILE).exists() or not (path / WEIGHTS_FILE).exists():
        raise FileNotFoundError(
            f"{path} has no {CONFIG_FILE} and {WEIGHTS_FILE}; is it a directory saved by model.save?"
        )
    meta = json.loads((path / CONFIG_FILE).read_text())
    if meta.get("format") != "cellflow" or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} holds format {meta.get('format')!r} version {meta.get('format_version')}; this cellflow reads "
            f"version {FORMAT_VERSION}. Save the model again with the cellflow that trained it, or retrain it."
        )
    tensors = load_file(str(path / WEIGHTS_FILE))
    parts = {p: {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(p + ".")} for p in _PARTS}
    setup = SetupConfig.from_uns(meta["setup"])
    config = CellFlowConfig(**meta["model"])
    codec = ConditionCodec(meta["tokens"], meta["covariate_categories"], embedding_hint(config.token_embedding))
    shape = meta["token_features_shape"]
    features = None if shape is None else np.zeros(shape)
    cardinalities = [len(v) for v in codec.covariate_categories.values()]
    module = build_flow_module(config, setup, len(codec.tokens), cardinalities, features)
    module.encoder.load_state_dict(parts["encoder"], strict=True)
    module.backbone.load_state_dict(parts["backbone"], strict=True)
    module.eval()
    module.set_reference(ControlReference.from_tensors(parts["reference"], [tuple(c) for c in meta["contexts"]]))
    module.shifts = TokenShifts.from_tensors(parts["shift"]) if parts["shift"] else None
    if config.source_shift != "none" and module.shifts is None:
        raise ValueError(f"{path} is missing the source shifts its configuration uses; the file is damaged.")
    module.sampling = SamplingInfo(**meta["sampling"])
    model = cls.__new__(cls)
    model._set_parts(config, setup, codec, module, genes=meta["genes"])
    model.token_features_shape = shape
    model.vae = LatentVAE.from_state_dict(parts["vae"], VAEConfig(**meta["vae"]))
    model.batch_categories = meta["batch_categories"]
    model.flow_config = None if meta["flow_training"] is None else FlowTrainingConfig(**meta["flow_training"])
    model.history = meta["history"]
    return model
