"""Checkpoints that cannot lie: atomic saves, content hashes both ways, a checked configuration."""

import json
from dataclasses import replace

import numpy as np
import pytest

import cellflow as cf
from cellflow.models._config import CellFlowConfig
from cellflow.models._persistence import CheckpointError, _fields

GENERATE = {"conditions": ["control"], "n_cells": 10, "covariates": {"cell_type": "type_0"}, "seed": 0}


@pytest.fixture
def saved(trained, tmp_path):
    trained.save(tmp_path / "m")
    return tmp_path / "m"


def _edit(path, change):
    meta = json.loads((path / "config.json").read_text())
    change(meta)
    (path / "config.json").write_text(json.dumps(meta))


def _weights(path):
    return path / json.loads((path / "config.json").read_text())["weights"]["file"]


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["genes"].reverse(),  # genes in another order: the counts would be labelled wrongly
        lambda m: m["tokens"].reverse(),
        lambda m: m["contexts"].reverse(),
        lambda m: m["model"].__setitem__("likelihood", "poisson"),
        lambda m: m["sampling"].__setitem__("reflow_rounds", 0),
        lambda m: m["flow_training"].__setitem__("cells_per_group", 3),  # what reflow() after loading would use
        lambda m: m["dose_range"].__setitem__(1, 10.0),
        lambda m: m["model"].__setitem__("combination_offsets", "fit"),  # the offsets were estimated as a sum
    ],
    ids=["genes", "tokens", "contexts", "likelihood", "sampling", "flow_training", "dose_range", "combinations"],
)
def test_an_edited_configuration_is_refused(saved, change):
    _edit(saved, change)
    with pytest.raises(CheckpointError, match="does not describe these weights"):
        cf.CellFlow.load(saved)


def test_missing_unknown_and_mistyped_keys_are_named(saved):
    original = json.loads((saved / "config.json").read_text())
    _edit(saved, lambda m: m.pop("genes"))
    with pytest.raises(CheckpointError, match=r"missing keys \['genes'\]"):
        cf.CellFlow.load(saved)
    (saved / "config.json").write_text(json.dumps({**original, "colour": "red"}))
    with pytest.raises(CheckpointError, match=r"unknown keys \['colour'\]"):
        cf.CellFlow.load(saved)
    (saved / "config.json").write_text(json.dumps({**original, "genes": "g1"}))
    with pytest.raises(CheckpointError, match=r"\['genes'\] do not hold the expected types"):
        cf.CellFlow.load(saved)
    (saved / "config.json").write_text(json.dumps({k: v for k, v in original.items() if k != "format_version"}))
    with pytest.raises(CheckpointError, match="format version None"):
        cf.CellFlow.load(saved)
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        cf.CellFlow.load(saved)


def test_only_a_field_added_later_may_be_absent(saved):
    """A checkpoint written before ``combination_offsets`` existed meant a plain sum; any other gap is refused."""
    entry = json.loads((saved / "config.json").read_text())["model"]
    del entry["combination_offsets"]
    assert CellFlowConfig(**_fields({"model": entry}, "model", CellFlowConfig, saved)).combination_offsets == "sum"
    del entry["seed"]
    with pytest.raises(CheckpointError, match=r"lacks \['seed'\]"):
        _fields({"model": entry}, "model", CellFlowConfig, saved)


def test_truncated_weights_are_refused_with_the_path(saved):
    weights = _weights(saved)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{weights.name} is not the file config.json was saved with"):
        cf.CellFlow.load(saved)
    weights.unlink()
    with pytest.raises(CheckpointError, match=rf"weights file {weights.name} named in config.json is missing"):
        cf.CellFlow.load(saved)


def test_save_replaces_a_model_in_one_step_and_leaves_no_debris(trained, saved):
    before = cf.tl.generate(cf.CellFlow.load(saved), **GENERATE).obsm["X_cellflow"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(saved)
    trained.save(saved, overwrite=True)
    names = sorted(p.name for p in saved.iterdir())
    assert names == sorted(["config.json", _weights(saved).name])  # the old weights file is gone, no temp files
    np.testing.assert_array_equal(cf.tl.generate(cf.CellFlow.load(saved), **GENERATE).obsm["X_cellflow"], before)


def test_a_save_interrupted_before_its_commit_leaves_the_old_model(trained_copy, saved, monkeypatch):
    import cellflow.models._persistence as persistence

    before = cf.tl.generate(cf.CellFlow.load(saved), **GENERATE).obsm["X_cellflow"]
    trained_copy.module.sampling = replace(trained_copy.module.sampling, reflow_rounds=0)  # another model
    real_replace = persistence.os.replace

    def killed_at_commit(src, dst):
        if str(dst).endswith("config.json"):
            raise KeyboardInterrupt  # stopped just before config.json is replaced
        return real_replace(src, dst)

    monkeypatch.setattr(persistence.os, "replace", killed_at_commit)
    with pytest.raises(KeyboardInterrupt):
        trained_copy.save(saved, overwrite=True)
    monkeypatch.undo()
    assert not list(saved.glob(".*.tmp"))
    old = cf.CellFlow.load(saved)
    assert old.module.sampling.reflow_rounds == 1
    np.testing.assert_array_equal(cf.tl.generate(old, **GENERATE).obsm["X_cellflow"], before)
    trained_copy.save(saved, overwrite=True)  # the next save completes and clears the unreferenced weights
    assert len(list(saved.glob("weights-*.safetensors"))) == 1
    assert cf.CellFlow.load(saved).module.sampling.reflow_rounds == 0
