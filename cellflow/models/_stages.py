"""``model.train(checkpoint_dir=...)``: training that survives being stopped, stage by stage.

The folder holds ``run.json`` (the options and a fingerprint of the data: a folder is only
resumed by the same run), the trained VAE once its stage is done (``vae/``), a Lightning
checkpoint of the flow while it trains (``flow/last.ckpt``, every 50 steps), and the whole
model after the flow (``after_flow/``) and after reflow (``after_reflow/``). A stopped run
started again with the same folder skips the finished stages, resumes the flow from its last
checkpoint, and redoes an unfinished VAE or reflow from its start; every stage is seeded, so
the result is the one an uninterrupted run gives (bit for bit on the CPU; not with dropout
inside the backbone, whose draws come from torch's global stream). Every file is written to a
temporary name and renamed into place, so a kill leaves either the old state or the new one.
Without a folder, the same stages simply run one after the other.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..train import FlowTrainingConfig, ReflowConfig, VAETrainingConfig
from ..vae import LatentVAE, VAEConfig
from ._cells import DISTRIBUTED_OPTIONS, expression
from ._persistence import CONFIG_FILE, fsync, load_model, save_model, sha256, write_atomically

RUN_FILE = "run.json"


def train_in_stages(
    model,
    directory: Path | None,
    vae: VAETrainingConfig,
    flow: FlowTrainingConfig,
    again: ReflowConfig,
    *,
    hardware: dict,
    trainer_kwargs: dict | None,
) -> None:
    """Train ``model`` (VAE, flow, reflow), keeping what each finished stage produced in ``directory`` (if given)."""
    if directory is not None and (trainer_kwargs or {}).get("strategy") is not None:
        raise ValueError(
            "checkpoint_dir is not supported with a distributed strategy yet (every process would write the "
            "stages); train without checkpoint_dir, or on one process."
        )
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        _check_run(model, directory, {"vae": asdict(vae), "flow": asdict(flow), "reflow": asdict(again)})
    if _done(directory, "vae/vae.json"):
        _load_vae(model, directory / "vae")
    else:
        distributed = {k: v for k, v in (trainer_kwargs or {}).items() if k in DISTRIBUTED_OPTIONS}
        model.train_vae(**asdict(vae), **hardware, trainer_kwargs=distributed)
        if directory is not None:
            _save_vae(model, directory / "vae")
    flow_dir = None if directory is None else directory / "flow"
    if _done(directory, f"after_flow/{CONFIG_FILE}"):
        _adopt(model, load_model(type(model), directory / "after_flow"))
    else:
        model.train_flow(**asdict(flow), **hardware, trainer_kwargs=trainer_kwargs, checkpoint_dir=flow_dir)
        if directory is not None:
            save_model(model, directory / "after_flow", overwrite=True)
    if not again.rounds:
        return
    if _done(directory, f"after_reflow/{CONFIG_FILE}"):
        _adopt(model, load_model(type(model), directory / "after_reflow"))
    else:
        model.reflow(**asdict(again), **hardware, trainer_kwargs=trainer_kwargs)  # steps: half the flow's by default
        if directory is not None:
            save_model(model, directory / "after_reflow", overwrite=True)


def _done(directory: Path | None, marker: str) -> bool:
    return directory is not None and (directory / marker).exists()


def _check_run(model, directory: Path, options: dict) -> None:
    """Write the run's options and data fingerprint, or refuse a folder that holds another run."""
    run = {
        "model": asdict(model.config),
        "setup": model.setup.to_uns(),
        "options": options,
        "data_sha256": _data_hash(model),
    }
    run = json.loads(json.dumps(run))  # as it reads back
    path = directory / RUN_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        differ = sorted(k for k in run if saved.get(k) != run[k])
        if differ:
            raise ValueError(
                f"{directory} holds a training run with other {differ}; give another checkpoint_dir, or delete "
                "this one to start again."
            )
        return
    write_atomically(path, json.dumps(run, indent=1).encode())


def _data_hash(model) -> str:
    """SHA-256 of the training data as the model reads it: cell and gene names, registered columns, expression."""
    adata, setup = model.adata, model.setup
    digest = hashlib.sha256()
    digest.update("\n".join(map(str, adata.obs_names)).encode() + b"\0" + "\n".join(model.genes).encode())
    columns = [setup.perturbation_key, setup.dose_key, setup.time_key, *setup.covariate_keys, model.config.batch_key]
    present = [c for c in dict.fromkeys(columns) if c is not None]
    digest.update(pd.util.hash_pandas_object(adata.obs[present].astype(str), index=False).to_numpy().tobytes())
    matrix = expression(adata, setup)
    for start in range(0, matrix.shape[0], 4096):  # a block of rows at a time: memory bounded by the block
        block = matrix[start : start + 4096]  # in memory or on disk, sparse blocks hash alike
        if sp.issparse(block):
            block = sp.csr_matrix(block)
            for part in (block.data, block.indices, np.diff(block.indptr)):
                digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(np.ascontiguousarray(block).tobytes())
    return digest.hexdigest()


def _save_vae(model, directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".vae-{uuid.uuid4().hex}.tmp"
    save_file(model.vae.state_dict(), str(tmp))
    fsync(tmp)
    os.replace(tmp, directory / "vae.safetensors")
    meta = {
        "config": model.vae.config_dict(),
        "batch_categories": model.batch_categories,
        "sha256": sha256(directory / "vae.safetensors"),
        "seconds": model.history.get("vae_seconds"),
        "curves": {k: model.history[k] for k in ("vae_loss", "vae_validation_loss") if k in model.history},
    }
    write_atomically(directory / "vae.json", json.dumps(meta).encode())  # written last: the stage is done


def _load_vae(model, directory: Path) -> None:
    from safetensors.torch import load_file

    meta = json.loads((directory / "vae.json").read_text())
    weights = directory / "vae.safetensors"
    if sha256(weights) != meta["sha256"]:
        raise ValueError(f"{weights} is not the file its stage saved (damaged or replaced); delete {directory}.")
    vae = LatentVAE.from_state_dict(load_file(str(weights)), VAEConfig(**meta["config"]))
    model._use_latent_space(vae, meta["batch_categories"])
    model.history["vae_seconds"] = meta["seconds"]
    model.history |= meta.get("curves", {})  # the loss curves of the run that trained it


def _adopt(model, finished) -> None:
    """Take over the trained state of ``finished`` (the same model, loaded from a finished stage)."""
    model._use_latent_space(finished.vae, finished.batch_categories)
    model.module.restore(finished.module.snapshot())
    model.flow_config, model.history = finished.flow_config, dict(finished.history)
