"""Minibatches of a count matrix that stays on disk (backed ``.h5ad`` or zarr), for scvi-tools' custom data modules.

Random rows of an HDF5 or zarr sparse matrix are slow to read one by one, and the whole matrix
may not fit in memory. This loader reads contiguous blocks of rows in a random order, pools a
few blocks in a buffer, shuffles the rows of the buffer and cuts it into minibatches (the
block-shuffling of annbatch and of scDataset): every cell is seen once per epoch, reads are
sequential, and memory is bounded by the buffer, not the data set. Under distributed training
every rank reads its own share of the blocks.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import scipy.sparse as sp
import torch

BLOCK_ROWS = 1024
"""Rows read from disk in one piece: large enough for sequential reads, small enough to shuffle well."""
MIN_BATCH = 3
"""Smallest minibatch trained on (scvi-tools' data loader drops smaller last minibatches too)."""
BUFFER_BLOCKS = 16
"""Blocks pooled before their rows are shuffled; the buffer holds ``BLOCK_ROWS * BUFFER_BLOCKS`` cells."""


def is_in_memory(matrix) -> bool:
    """Whether ``matrix`` is a numpy array or a scipy sparse matrix (not a backed or lazy on-disk array)."""
    return isinstance(matrix, np.ndarray) or sp.issparse(matrix)


class RowRange:
    """Rows ``start:stop`` of an in-memory or on-disk matrix, sliced lazily: nothing is read until sliced.

    Sliceable by rows like the matrix itself (``rows[a:b]`` reads rows ``start + a`` to
    ``start + b`` of the matrix), so a share of a backed matrix can be passed where the whole one
    would be, without loading the share.
    """

    def __init__(self, matrix, start: int, stop: int) -> None:
        self.matrix, self.start = matrix, start
        self.shape = (max(0, stop - start), matrix.shape[1])

    def __getitem__(self, rows: slice):
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError(f"RowRange takes a contiguous slice of rows, got {rows!r}.")
        begin, end, _ = rows.indices(self.shape[0])
        return self.matrix[self.start + begin : self.start + max(begin, end)]


def read_rows(matrix, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an in-memory or on-disk matrix, as a dense float32 array."""
    chunk = matrix[start:stop]
    chunk = chunk.toarray() if sp.issparse(chunk) else np.asarray(chunk)
    return chunk.astype(np.float32, copy=False)


class BlockShuffleDataset(torch.utils.data.IterableDataset):
    """Minibatch dictionaries (scvi-tools' keys ``X``, ``batch``, ``labels``) drawn block by block.

    Parameters
    ----------
    matrix
        Cells x genes counts: a backed AnnData's ``X`` (``h5ad``/zarr sparse dataset or HDF5
        dataset) or anything sliceable by rows.
    batch
        Integer batch code of every cell, or ``None`` (one batch).
    batch_size
        Cells per minibatch.
    seed
        Seeds the order of blocks and rows; epoch ``e`` uses ``(seed, e)``, so a run is repeatable.
    rank, world_size
        This process's share under distributed training: the shuffled blocks are dealt
        round-robin, and every rank takes the same number of full minibatches, a rank with
        fewer cells drawing a few of its cells twice (as ``DistributedSampler`` pads), so no
        rank waits for another at the end of an epoch and every cell is seen.
    block_rows, buffer_blocks
        Rows read in one piece (at most: small data sets get smaller blocks, down to a
        minibatch, so that every rank has several) and blocks pooled before shuffling.
    """

    def __init__(
        self,
        matrix,
        batch: np.ndarray | None,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        block_rows: int = BLOCK_ROWS,
        buffer_blocks: int = BUFFER_BLOCKS,
    ) -> None:
        super().__init__()
        self.matrix = matrix
        self.batch = None if batch is None else np.asarray(batch, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        # Small data sets get smaller blocks, so that every rank has several to shuffle.
        block_rows = max(1, min(block_rows, max(batch_size, matrix.shape[0] // (4 * buffer_blocks * world_size))))
        self.block_rows, self.buffer_blocks = block_rows, buffer_blocks
        self.epoch = 0
        n_blocks = math.ceil(matrix.shape[0] / block_rows)
        if n_blocks < world_size:
            raise ValueError(
                f"{matrix.shape[0]} cells make {n_blocks} blocks of {block_rows} rows, fewer than the "
                f"{world_size} processes that would share them; train on fewer devices."
            )
        self.n_blocks = n_blocks
        self.blocks_per_rank = math.ceil(n_blocks / world_size)  # some ranks get one block fewer
        if len(self) == 0:
            raise ValueError(
                f"{matrix.shape[0]} cells cannot fill a minibatch of at least {MIN_BATCH} cells; use more cells."
            )

    def _my_blocks(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(self.n_blocks)[self.rank :: self.world_size]

    def __len__(self) -> int:
        """Minibatches this rank yields per epoch.

        One process: every cell once, the last minibatch short (dropped below
        :data:`MIN_BATCH` cells, whose batch norm statistics would be meaningless). Under
        distributed training every rank yields the same number of full minibatches (ranks
        that took different numbers of steps would wait for each other forever): as many as
        the largest share of blocks fills, a rank with fewer cells topping its last
        minibatches up with cells drawn again from its own, as ``DistributedSampler`` does.
        """
        n_cells, size = self.matrix.shape[0], self.batch_size
        if self.world_size == 1:
            return n_cells // size + (n_cells % size >= MIN_BATCH)
        return math.ceil(self.blocks_per_rank * self.block_rows / size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        blocks, remaining, size = self._my_blocks(rng), len(self), self.batch_size
        x, index = np.zeros((0, self.matrix.shape[1]), dtype=np.float32), np.zeros(0, dtype=np.int64)
        for first in range(0, len(blocks), self.buffer_blocks):
            # Read the buffer's blocks in file order (sequential I/O), then shuffle their rows
            # together with the cells left over from the previous buffer.
            starts = np.sort(blocks[first : first + self.buffer_blocks]) * self.block_rows
            rows = [np.arange(s, min(s + self.block_rows, self.matrix.shape[0])) for s in starts]
            x = np.concatenate([x, *(read_rows(self.matrix, r[0], r[-1] + 1) for r in rows)])
            index = np.concatenate([index, *rows])
            order = rng.permutation(len(index))
            x, index = x[order], index[order]
            full = min(len(index) // size, remaining)
            for lo in range(0, full * size, size):
                yield self._minibatch(x[lo : lo + size], index[lo : lo + size])
            remaining -= full
            x, index = x[full * size :], index[full * size :]
        if self.world_size == 1:
            if remaining and len(index) >= MIN_BATCH:  # the last, short minibatch
                yield self._minibatch(x, index)
            return
        if remaining:  # top up with cells of this rank's last block, drawn again
            start = blocks[-1] * self.block_rows
            stop = min(start + self.block_rows, self.matrix.shape[0])
            pool_x, pool_index = read_rows(self.matrix, start, stop), np.arange(start, stop)
        for _ in range(remaining):
            extra = rng.choice(len(pool_index), size - len(index))
            x, index = np.concatenate([x, pool_x[extra]]), np.concatenate([index, pool_index[extra]])
            yield self._minibatch(x, index)
            x, index = x[:0], index[:0]

    def _minibatch(self, x: np.ndarray, index: np.ndarray) -> dict[str, torch.Tensor]:
        batch = np.zeros(len(index), dtype=np.int64) if self.batch is None else self.batch[index]
        return {
            "X": torch.from_numpy(x),
            "batch": torch.from_numpy(batch).view(-1, 1),
            "labels": torch.zeros(len(index), 1, dtype=torch.long),
        }


class BlockShuffleDataModule(pl.LightningDataModule):
    """A Lightning data module over :class:`BlockShuffleDataset`, sharded by the trainer's rank.

    scvi-tools builds its VAE from ``n_obs`` and ``n_vars`` when it trains from a data module.
    """

    def __init__(self, matrix, batch: np.ndarray | None, *, batch_size: int, seed: int) -> None:
        super().__init__()
        self.matrix, self.batch, self.batch_size, self.seed = matrix, batch, batch_size, seed
        self.n_obs, self.n_vars = matrix.shape
        self.dataset: BlockShuffleDataset | None = None

    def setup(self, stage: str | None = None) -> None:  # noqa: D102
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self.dataset = BlockShuffleDataset(
            self.matrix, self.batch, batch_size=self.batch_size, seed=self.seed, rank=rank, world_size=world
        )

    def train_dataloader(self):  # noqa: D102
        # Batches are made by the dataset; worker processes would each reopen the file.
        return torch.utils.data.DataLoader(self.dataset, batch_size=None, num_workers=0)
