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

import numpy as np
import scipy.sparse as sp
import torch

BLOCK_ROWS = 1024
"""Rows read from disk in one piece: large enough for sequential reads, small enough to shuffle well."""
BUFFER_BLOCKS = 16
"""Blocks pooled before their rows are shuffled; the buffer holds ``BLOCK_ROWS * BUFFER_BLOCKS`` cells."""


def is_in_memory(matrix) -> bool:
    """Whether ``matrix`` is a numpy array or a scipy sparse matrix (not a backed or lazy on-disk array)."""
    return isinstance(matrix, np.ndarray) or sp.issparse(matrix)


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
        This process's share under distributed training: the shuffled blocks are dealt round-robin
        and every rank gets the same number of blocks (a few cells of an epoch are skipped, as with
        ``drop_last``), so no rank waits for another at the end of an epoch.
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
        self.block_rows, self.buffer_blocks = block_rows, buffer_blocks
        self.epoch = 0
        n_blocks = math.ceil(matrix.shape[0] / block_rows)
        if n_blocks < world_size:
            raise ValueError(
                f"{matrix.shape[0]} cells make {n_blocks} blocks of {block_rows} rows, fewer than the "
                f"{world_size} processes that would share them; train on fewer devices."
            )
        self.n_blocks = n_blocks
        self.blocks_per_rank = n_blocks // world_size

    def _my_blocks(self, rng: np.random.Generator) -> np.ndarray:
        dealt = rng.permutation(self.n_blocks)[: self.blocks_per_rank * self.world_size]
        return dealt[self.rank :: self.world_size]

    def __len__(self) -> int:
        """Minibatches this rank yields per epoch (an upper bound when the last block is short)."""
        return math.ceil(self.blocks_per_rank * self.block_rows / self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        blocks = self._my_blocks(rng)
        for first in range(0, len(blocks), self.buffer_blocks):
            # Read the buffer's blocks in file order (sequential I/O), then shuffle their rows.
            starts = np.sort(blocks[first : first + self.buffer_blocks]) * self.block_rows
            rows = [np.arange(s, min(s + self.block_rows, self.matrix.shape[0])) for s in starts]
            x = np.concatenate([read_rows(self.matrix, r[0], r[-1] + 1) for r in rows])
            index = np.concatenate(rows)
            order = rng.permutation(len(index))
            for lo in range(0, len(order), self.batch_size):
                pick = order[lo : lo + self.batch_size]
                yield self._minibatch(x[pick], index[pick])

    def _minibatch(self, x: np.ndarray, index: np.ndarray) -> dict[str, torch.Tensor]:
        batch = np.zeros(len(index), dtype=np.int64) if self.batch is None else self.batch[index]
        return {
            "X": torch.from_numpy(x),
            "batch": torch.from_numpy(batch).view(-1, 1),
            "labels": torch.zeros(len(index), 1, dtype=torch.long),
        }


def disk_datamodule(matrix, batch: np.ndarray | None, *, batch_size: int, seed: int):
    """A Lightning data module over :class:`BlockShuffleDataset`, sharded by the trainer's rank."""
    import lightning.pytorch as pl

    class BlockShuffleDataModule(pl.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.n_obs, self.n_vars = matrix.shape
            self.dataset: BlockShuffleDataset | None = None

        def setup(self, stage: str | None = None) -> None:
            trainer = self.trainer
            rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
            self.dataset = BlockShuffleDataset(
                matrix, batch, batch_size=batch_size, seed=seed, rank=rank, world_size=world
            )

        def train_dataloader(self):
            # Batches are made by the dataset; worker processes would each reopen the file.
            return torch.utils.data.DataLoader(self.dataset, batch_size=None, num_workers=0)

    return BlockShuffleDataModule()
