"""``model.train(checkpoint_dir=...)``: training that survives being stopped, stage by stage.

The folder holds ``run.json`` (the options and a fingerprint of the data: a folder is only
resumed by the same run), the trained VAE once its stage is done (``vae/``), a Lightning
checkpoint of the flow while it trains (``flow/last.ckpt``, every 50 steps), and the whole
model after the flow (``after_flow/``) and after reflow (``after_reflow/``). A stopped run
started again with the same folder skips the finished stages, resumes the flow from its last
checkpoint, and redoes an unfinished VAE or reflow from its start; every stage is seeded, so
the result is the one an uninterrupted run gives (bit for bit on the CPU). Every file is
written to a temporary name and renamed into place, so a kill leaves either the old state or
the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict
from pathlib import Path

from ..train import FlowTrainingConfig, ReflowConfig, VAETrainingConfig
from ..vae import LatentVAE, VAEConfig
from ._persistence import CONFIG_FILE, load_model, save_model

RUN_FILE = "run.json"


def train_in_stages(
    model,
    directory: Path,
    vae: VAETrainingConfig,
    flow: FlowTrainingConfig,
    again: ReflowConfig,
    *,
    hardware: dict,
    trainer_kwargs: dict | None,
) -> None:
    """Train ``model`` (VAE, flow, reflow) keeping what each finished stage produced in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    _check_run(model, directory, {"vae": asdict(vae), "flow": asdict(flow), "reflow": asdict(again)})
    if (directory / "vae" / "vae.json").exists():
        _load_vae(model, directory / "vae")
    else:
        model.train_vae(**asdict(vae), **hardware)
        _save_vae(model, directory / "vae")
    if (directory / "after_flow" / CONFIG_FILE).exists():
        _adopt(model, load_model(type(model), directory / "after_flow"))
    else:
        model.train_flow(**asdict(flow), **hardware, trainer_kwargs=trainer_kwargs, checkpoint_dir=directory / "flow")
        save_model(model, directory / "after_flow", overwrite=True)
    if not again.rounds:
        return
    if (directory / "after_reflow" / CONFIG_FILE).exists():
        _adopt(model, load_model(type(model), directory / "after_reflow"))
    else:
        steps = again.steps_after(flow.steps)
        model.reflow(**{**asdict(again), "steps": steps}, **hardware, trainer_kwargs=trainer_kwargs)
        save_model(model, directory / "after_reflow", overwrite=True)


def _check_run(model, directory: Path, options: dict) -> None:
    """Write the run's options and data fingerprint, or refuse a folder that holds another run."""
    adata = model.adata
    names = "\n".join(map(str, adata.obs_names)) + "\0" + "\n".join(model.genes)
    run = {
        "model": asdict(model.config),
        "options": options,
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "names_sha256": hashlib.sha256(names.encode()).hexdigest(),
    }
    path = directory / RUN_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != json.loads(json.dumps(run)):
            differ = sorted(k for k in run if saved.get(k) != json.loads(json.dumps(run[k])))
            raise ValueError(
                f"{directory} holds a training run with other {differ}; give another checkpoint_dir, or delete "
                "this one to start again."
            )
        return
    _write_atomically(path, json.dumps(run, indent=1).encode())


def _save_vae(model, directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".vae-{uuid.uuid4().hex}.tmp"
    save_file(model.vae.state_dict(), str(tmp))
    os.replace(tmp, directory / "vae.safetensors")
    meta = {"config": model.vae.config_dict(), "batch_categories": model.batch_categories}
    _write_atomically(directory / "vae.json", json.dumps(meta).encode())  # written last: the stage is done


def _load_vae(model, directory: Path) -> None:
    from safetensors.torch import load_file

    meta = json.loads((directory / "vae.json").read_text())
    model.vae = LatentVAE.from_state_dict(load_file(str(directory / "vae.safetensors")), VAEConfig(**meta["config"]))
    model.batch_categories = list(meta["batch_categories"])
    model._cells = None


def _adopt(model, finished) -> None:
    """Take over the trained state of ``finished`` (the same model, loaded from a finished stage)."""
    model.vae, model.batch_categories = finished.vae, list(finished.batch_categories)
    model.module.restore(finished.module.snapshot())
    model.flow_config, model.history = finished.flow_config, dict(finished.history)
    model._cells = None


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
