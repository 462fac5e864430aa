"""Training from a backed AnnData: the counts stay on disk, and the model matches one trained in memory."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import cellflow as cf
from cellflow.models._stages import _data_hash
from cellflow.vae import LatentVAE, VAEConfig
from cellflow.vae._disk import BLOCK_ROWS, BlockShuffleDataset

FAST = {"progress_bar": False, "accelerator": "cpu"}


class RowReadSpy:
    """A CSR matrix that records every block of rows read and refuses reads larger than ``limit`` rows."""

    def __init__(self, matrix: sp.csr_matrix, limit: int) -> None:
        self.matrix, self.limit, self.reads = matrix, limit, []
        self.shape, self.dtype = matrix.shape, matrix.dtype

    def __getitem__(self, rows):
        start, stop, _ = rows.indices(self.shape[0])
        assert stop - start <= self.limit, f"read {stop - start} rows at once"
        self.reads.append((start, stop))
        return self.matrix[rows]


def _counts(n_cells=5000, n_genes=30, seed=0):
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32))


def _epoch_cells(dataset) -> np.ndarray:
    """Row numbers (+1) of the cells of one epoch, in the order they came."""
    return np.concatenate([minibatch["X"][:, 0].numpy() for minibatch in dataset])


def _numbered(n_cells: int) -> sp.csr_matrix:
    """A matrix whose first column is the row number + 1: every minibatch says which cells it holds."""
    numbers = np.arange(1, n_cells + 1, dtype=np.float32)[:, None]
    return sp.csr_matrix(np.hstack([numbers, np.ones((n_cells, 3), dtype=np.float32)]))


def test_every_cell_once_per_epoch_in_a_new_order_each_epoch():
    dataset = BlockShuffleDataset(_numbered(5000), None, batch_size=128, seed=0, block_rows=512, buffer_blocks=3)
    first, second = _epoch_cells(dataset), _epoch_cells(dataset)
    assert np.array_equal(np.sort(first), np.arange(1, 5001))
    assert np.array_equal(np.sort(second), np.arange(1, 5001))
    assert not np.array_equal(first, second)
    # Shuffled across blocks of a buffer, not only block by block.
    assert len({int((v - 1) // 512) for v in first[:128]}) > 1
    # The same seed repeats the same epochs.
    again = BlockShuffleDataset(_numbered(5000), None, batch_size=128, seed=0, block_rows=512, buffer_blocks=3)
    assert np.array_equal(_epoch_cells(again), first)


def test_ranks_share_the_cells_and_take_the_same_number_of_full_steps():
    matrix = _numbered(5000)
    shards = [
        BlockShuffleDataset(matrix, None, batch_size=100, seed=3, rank=r, world_size=3, block_rows=512)
        for r in range(3)
    ]
    for _ in range(3):  # epochs
        batches = [[b["X"][:, 0].numpy() for b in s] for s in shards]
        # Every rank takes the same number of full minibatches (else DDP would hang) ...
        assert {len(b) for b in batches} == {len(shards[0])}
        assert all(len(x) == 100 for b in batches for x in b)
        # ... and together they see every cell, a rank with fewer cells drawing a few again.
        seen = np.concatenate([np.concatenate(b) for b in batches])
        assert np.array_equal(np.unique(seen), np.arange(1, 5001))
        assert len(seen) - 5000 < 3 * 100 + shards[0].block_rows
    with pytest.raises(ValueError, match="fewer than the 200 processes"):
        BlockShuffleDataset(matrix, None, batch_size=100, seed=0, world_size=200, block_rows=512)


@pytest.mark.parametrize(("n_cells", "expected"), [(513, [256, 256]), (515, [256, 256, 3]), (300, [256, 44])])
def test_one_process_sees_every_cell_and_no_minibatch_below_three_cells(n_cells, expected):
    dataset = BlockShuffleDataset(_numbered(n_cells), None, batch_size=256, seed=0)
    sizes = [len(b["X"]) for b in dataset]
    assert sizes == expected and len(dataset) == len(expected)
    with pytest.raises(ValueError, match="cannot fill a minibatch"):
        BlockShuffleDataset(_numbered(2), None, batch_size=256, seed=0)


def test_batch_codes_travel_with_their_cells():
    matrix = _numbered(3000)
    codes = np.arange(3000) % 7
    dataset = BlockShuffleDataset(matrix, codes, batch_size=64, seed=1, block_rows=256)
    for minibatch in dataset:
        rows = minibatch["X"][:, 0].numpy().astype(int) - 1
        assert np.array_equal(minibatch["batch"].numpy().ravel(), codes[rows])
        assert minibatch["labels"].shape == (len(rows), 1)


def test_the_vae_trains_and_encodes_reading_bounded_blocks_only():
    counts = _counts(n_cells=5001)  # one cell more than a multiple of the minibatch
    spy = RowReadSpy(counts, limit=BLOCK_ROWS)  # training reads blocks of at most BLOCK_ROWS rows
    vae = LatentVAE.fit(spy, batch=None, config=VAEConfig(n_input=30, n_latent=4), max_epochs=2, **FAST)
    assert len(spy.reads) > 5000 // BLOCK_ROWS
    spy.limit = 4096  # the latent pass reads blocks of 4,096 rows
    latent, log_library = vae.encode_with_library(spy, None)
    assert np.allclose(latent, vae.encode(counts), atol=1e-6)  # the in-memory path gives the same latents
    assert np.allclose(log_library, np.log(np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1.0)))


def test_a_backed_anndata_trains_generates_and_matches_one_in_memory(screen, tmp_path):
    _, _, _, train = screen
    train.write_h5ad(tmp_path / "train.h5ad")
    backed = ad.read_h5ad(tmp_path / "train.h5ad", backed="r")
    setup = {"perturbation_key": "perturbation", "control": "control", "covariate_keys": ["cell_type"]}
    cf.pp.setup(backed, **setup)
    assert _data_hash_of(backed) == _data_hash_of(train)

    scores = {}
    for name, data in {"backed": backed, "memory": train}.items():
        model = cf.CellFlow(data, latent_dim=16, backbone_kwargs={"hidden_dim": 128, "n_blocks": 2}, seed=0)
        model.train(vae_epochs=40, flow_steps=300, **FAST)
        assert isinstance(backed.X, ad.abc.CSRDataset)  # still on disk
        scores[name] = _mean_error(model, train)
        if name == "backed":
            model.save(tmp_path / "model")
            loaded = cf.CellFlow.load(tmp_path / "model")
            assert _mean_error(loaded, train) == pytest.approx(scores[name])
    control_error = _mean_error(None, train)
    # Trained from disk, the model beats the control baseline as clearly as when trained in memory.
    assert scores["backed"] < 0.6 * control_error
    assert scores["backed"] < 1.25 * scores["memory"]
    backed.file.close()


def _data_hash_of(adata) -> str:
    class Model:
        pass

    model = Model()
    model.adata, model.setup, model.genes = adata, cf.pp.get_setup(adata), list(map(str, adata.var_names))
    model.config = type("Config", (), {"batch_key": None})()
    return _data_hash(model)


def _mean_error(model, real) -> float:
    """Root mean squared error of predicted mean log1p-normalised expression over the perturbed conditions."""
    labels = real.obs["perturbation"].astype(str)
    perturbed = sorted(set(labels) - {"control"})
    cell_type = {"cell_type": "type_0"}
    keep = (real.obs["cell_type"] == "type_0").to_numpy()

    def profile(x):
        x = x.toarray() if sp.issparse(x) else np.asarray(x)
        return np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4).mean(0)

    control = profile(real[(labels == "control").to_numpy() & keep].X)
    errors = []
    for condition in perturbed:
        truth = profile(real[(labels == condition).to_numpy() & keep].X)
        if model is None:
            pred = control
        else:
            pred = profile(cf.tl.generate(model, conditions=[condition], covariates=cell_type, n_cells=200, seed=0).X)
        errors.append(np.mean((pred - truth) ** 2))
    return float(np.sqrt(np.mean(errors)))
