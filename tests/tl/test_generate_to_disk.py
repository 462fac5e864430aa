"""cf.tl.generate(..., out=...): the same cells as in memory, written in chunks with bounded memory."""

import gc
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import cellflow as cf
import cellflow.tl._generate as generate_module
from cellflow.flow import ConditionBatch
from cellflow.pp._conditions import parse_condition

CONTEXT = {"cell_type": "type_0"}


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 1024 cells for the 60-gene test model (16384 otherwise): several blocks per condition, quickly."""
    monkeypatch.setattr(generate_module, "BLOCK_ENTRIES", 1024 * 60)
    assert generate_module.block_cells(60) == 1024


@pytest.fixture(scope="module")
def conditions(trained):
    return ["control", *[c for c in trained.setup.conditions if "+" in c][:2]]


def _in_memory(result):
    """X of a result returned in memory or opened from disk, as a CSR matrix."""
    return result.X if sp.issparse(result.X) else result.X[0 : result.n_obs]


def assert_same_result(a, b):
    assert a.shape == b.shape
    assert (_in_memory(a) != _in_memory(b)).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert list(a.obsm) == list(b.obsm)
    for key in a.obsm:
        np.testing.assert_array_equal(a.obsm[key], b.obsm[key])
    assert a.uns["cellflow_generate"] == b.uns["cellflow_generate"]


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_written_cells_are_the_cells_in_memory_whatever_the_chunk(trained, conditions, small_blocks, tmp_path, suffix):
    kwargs = {"conditions": conditions, "n_cells": 2500, "covariates": CONTEXT, "seed": 4}  # 3 blocks per condition
    expected = cf.tl.generate(trained, **kwargs)
    for chunk_size in (1800, 100_000):  # across blocks (1024 cells) and conditions (2500), everything at once
        out = tmp_path / f"chunk{chunk_size}{suffix}"
        written = cf.tl.generate(trained, **kwargs, out=out, chunk_size=chunk_size)
        assert not sp.issparse(written.X)  # X stays on disk
        assert_same_result(written, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"chunk{c}{suffix}" for c in (100000, 1800)]


def test_opened_result_reads_back_fully(trained, conditions, tmp_path):
    import anndata as ad

    written = cf.tl.generate(trained, conditions=conditions, n_cells=30, covariates=CONTEXT, out=tmp_path / "p.h5ad")
    assert written.isbacked and written.filename == tmp_path / "p.h5ad"
    assert_same_result(ad.read_h5ad(tmp_path / "p.h5ad"), written)
    assert written[:5].to_memory().shape == (5, len(trained.genes))


def test_one_block_draws_exactly_what_the_flow_and_decoder_draw(trained):
    """Up to one block per condition, generate consumes the seed as sample + decode do: cells as before blocks."""
    module, codec = trained.module, trained.codec
    condition = parse_condition("control", control="control", sep="+")
    ids, dose, mask = codec.encode_conditions([condition])
    covariates = codec.encode_covariates([CONTEXT])
    context = torch.tensor([module.reference.context_code(("type_0",))])
    batch = ConditionBatch(ids, dose, mask, covariates, torch.tensor([0.0]), context)
    generator = torch.Generator().manual_seed(9)
    z1, log_library, vae_batch, scale, _ = module.sample(batch, 40, generator, method="euler", steps=4)
    counts = trained.vae.decode(
        z1,
        log_library[:, None],
        vae_batch[:, None],
        generator=generator,
        sparse=True,
        latent_scale=scale,
        gene_offset=module.gene_offset(batch),
    )

    pred = cf.tl.generate(trained, conditions=["control"], n_cells=40, covariates=CONTEXT, seed=9)
    np.testing.assert_array_equal(pred.obsm["X_cellflow"], z1.numpy())
    assert (pred.X != counts).nnz == 0


def test_backbone_over_time_writes_the_same_trajectories(tmp_path, monkeypatch):
    """Trajectories are carried per block, then decoded time point by time point: the same rows on disk."""
    adata = cf.datasets.simulate_perturbseq(
        600, n_timepoints=3, seed=1, n_genes=30, n_cell_types=1, n_perturbations=3, n_combinations=1
    )
    cf.pp.setup(adata, perturbation_key="perturbation", control="control", time_key="time")
    kwargs = {"hidden_dim": 8, "n_blocks": 1, "d_state": 4}
    model = cf.CellFlow(adata, backbone="mamba", latent_dim=4, cond_dim=8, backbone_kwargs=kwargs, seed=0)
    flow_kwargs = {"groups_per_batch": 2, "cells_per_group": 4}
    model.train(vae_epochs=2, flow_steps=5, flow_kwargs=flow_kwargs, progress_bar=False, accelerator="cpu")
    monkeypatch.setattr(generate_module, "BLOCK_ENTRIES", 1024 * 30)  # 1024-cell blocks for 30 genes
    request = {"conditions": ["control", model.codec.tokens[0]], "times": [48.0, 9.8], "n_cells": 1500, "seed": 2}
    expected = cf.tl.generate(model, **request)
    written = cf.tl.generate(model, **request, out=tmp_path / "course.zarr", chunk_size=999)
    assert_same_result(written, expected)
    trajectory = written.obs["trajectory"].to_numpy()
    np.testing.assert_array_equal(trajectory[:1500], trajectory[1500:3000])  # one id per trajectory at both times
    np.testing.assert_array_equal(trajectory[3000:4500], 1500 + np.arange(1500))


def test_existing_out_is_refused_before_any_work_unless_overwrite(trained, tmp_path, monkeypatch):
    out = tmp_path / "pred.h5ad"
    out.write_bytes(b"precious")
    with monkeypatch.context() as patch:
        patch.setattr(trained.module, "sample", lambda *a, **k: pytest.fail("generated before refusing"))
        with pytest.raises(FileExistsError, match=r"pred.h5ad' exists; pass overwrite=True"):
            cf.tl.generate(trained, conditions=["control"], n_cells=5, covariates=CONTEXT, out=out)
    assert out.read_bytes() == b"precious"
    replaced = cf.tl.generate(trained, conditions=["control"], n_cells=5, covariates=CONTEXT, out=out, overwrite=True)
    assert replaced.shape == (5, len(trained.genes))
    assert [p.name for p in tmp_path.iterdir()] == ["pred.h5ad"]


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_interrupted_generation_leaves_no_file(trained, small_blocks, tmp_path, monkeypatch, suffix):
    decode, calls = trained.vae.decode, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # two blocks are already written
            raise KeyboardInterrupt
        return decode(*args, **kwargs)

    out = tmp_path / f"pred{suffix}"
    monkeypatch.setattr(trained.vae, "decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cf.tl.generate(trained, conditions=["control"], n_cells=5000, covariates=CONTEXT, out=out, chunk_size=1024)
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"out": "pred.csv"}, ValueError, r"out='pred.csv' must end in .h5ad or .zarr"),
        ({"out": "missing/pred.h5ad"}, ValueError, r"the folder 'missing' does not exist"),
        ({"out": "pred.h5ad", "chunk_size": 0}, ValueError, "chunk_size=0 must be at least 1"),
        ({"out": "pred.h5ad", "chunk_size": 2.5}, TypeError, "chunk_size must be an int"),
        ({"out": 3}, TypeError, "out must be a path"),
    ],
)
def test_bad_outputs(trained, tmp_path, monkeypatch, kwargs, error, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message):
        cf.tl.generate(trained, conditions=["control"], n_cells=5, covariates=CONTEXT, **kwargs)


def test_no_size_limit_on_disk(trained, tmp_path, monkeypatch):
    """MAX_ENTRIES bounds what is kept in memory only: the same request written to disk starts generating."""

    class Started(Exception):
        pass

    def started(*args, **kwargs):
        raise Started

    monkeypatch.setattr(trained.module, "sample", started)
    n_cells = generate_module.MAX_ENTRIES // len(trained.genes) + 1
    with pytest.raises(ValueError, match="out='generated.h5ad'"):
        cf.tl.generate(trained, conditions=["control"], n_cells=n_cells, covariates=CONTEXT)
    with pytest.raises(Started):
        cf.tl.generate(trained, conditions=["control"], n_cells=n_cells, covariates=CONTEXT, out=tmp_path / "p.h5ad")
    assert list(tmp_path.iterdir()) == []


def _peak_bytes(function) -> int:
    """Peak memory allocated through Python's allocators (numpy and scipy arrays included) while ``function`` runs."""
    gc.collect()
    tracemalloc.start()
    try:
        function()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_memory_grows_with_the_chunk_not_with_the_cells(trained, conditions, small_blocks, tmp_path, monkeypatch):
    """Generating and writing holds a chunk; opening the result is left out (anndata reads its obs and obsm)."""
    monkeypatch.setattr("cellflow.datasets._write.open_backed", lambda path: None)

    def run(n_cells, chunk_size=None):
        kwargs = {"conditions": conditions[:2], "n_cells": n_cells, "covariates": CONTEXT, "steps": 1}  # fast

        def in_memory():
            cf.tl.generate(trained, **kwargs)

        def to_disk():
            out = tmp_path / f"{n_cells}-{chunk_size}.h5ad"
            cf.tl.generate(trained, **kwargs, out=out, chunk_size=chunk_size)

        return in_memory if chunk_size is None else to_disk

    small, large = 1024, 8192  # 2 and 16 blocks in all
    streamed_small, streamed_large = _peak_bytes(run(small, 1024)), _peak_bytes(run(large, 1024))
    in_memory_large = _peak_bytes(run(large))
    large_chunks = _peak_bytes(run(large, 8192))
    assert streamed_large < 1.25 * streamed_small  # 8 times the cells, about the same peak
    assert in_memory_large > 4 * streamed_large  # what the measure sees when every cell is kept
    assert large_chunks > 2 * streamed_large  # 8 times the chunk: a larger peak
