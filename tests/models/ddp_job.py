"""A distributed training run for the DDP test: ``python ddp_job.py PROCESSES DATA.h5ad|- MODEL_DIR``.

Lightning's DDP on the CPU (gloo) starts ``PROCESSES`` processes, each running this script; both
stages (the VAE through scvi-tools, the flow and its reflow) train under one process group. Rank 0
saves the model. ``DATA`` may be a backed ``.h5ad`` file (``-``: simulated in memory). The latent
pass is split across the ranks in chunks of 256 cells (the library's are larger than these data),
and each rank checks the gathered latents against one process's pass of the same VAE; the pass
over the counts for the gene offsets is split likewise and checked against one process's. Then
the ranks generate cells together into ``generated.h5ad`` in the working folder.
"""

import hashlib
import sys

import anndata as ad
import numpy as np
import torch

import cellflow as cf
from cellflow.models import _cells
from cellflow.train import _gene_offsets
from cellflow.vae import LatentVAE

TRAIN = {
    "vae_epochs": 30,
    "flow_steps": 300,
    "reflow_rounds": 1,
    "reflow_kwargs": {"steps": 50, "pairs_per_group": 16, "ode_steps": 2},
}


GENERATE = {"n_cells": 1500, "covariates": {"cell_type": "type_0"}, "seed": 3}


def main(processes: int, data: str, out: str) -> None:
    torch.set_num_threads(1)
    if data == "-":
        adata = cf.datasets.simulate_perturbseq(n_cells=1200, n_genes=40, n_cell_types=2, seed=0)
    else:
        adata = ad.read_h5ad(data, backed="r")
    cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    model = cf.CellFlow(adata, latent_dim=4, backbone_kwargs={"hidden_dim": 16, "n_blocks": 1}, seed=5)
    _cells.ENCODE_CHUNK = 256  # so that every rank encodes a share of these 1,200 cells
    _gene_offsets.COUNT_CHUNK = 256  # and sums the counts of a share
    shares = record_count_shares()
    model.train(**TRAIN, accelerator="cpu", devices=processes, trainer_kwargs={"strategy": "ddp"}, progress_bar=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    say(f"rank {rank} of {world} trained weights {weights_hash(model)}")
    gathered = model._encoded_cells()
    matrix = _cells.expression(adata, model.setup)
    latent, log_library = model.vae.encode_with_library(matrix, gathered.batch, batch_size=256)
    same = np.array_equal(gathered.latent, latent) and np.array_equal(gathered.log_library, log_library)
    cells = len(gathered.latent)
    say(f"rank {rank} of {world} latent pass of {cells} cells equals one process's: {same}")
    say(f"rank {rank} of {world} summed the counts of chunks {' '.join(map(str, shares))}")
    say(f"rank {rank} of {world} gene offsets equal one process's: {offsets_of_one_process(model, adata)}")
    model.save(out)
    # Generation shared out among the ranks: 2 conditions of one block each, one per rank; rank 0 writes.
    conditions = ["control", model.codec.tokens[0]]
    pred = cf.tl.generate(model, conditions=conditions, **GENERATE, out="generated.h5ad", distributed=True)
    say(f"rank {rank} of {world} generated {pred.n_obs} cells to {pred.filename.name}")


def record_count_shares() -> list[int]:
    """The chunks this rank sums in the pass over the counts (filled as training calls ``count_sums``)."""
    shares, count_sums = [], LatentVAE.count_sums

    def recording(self, *args, chunks=None, **kwargs):
        shares.extend(chunks or [])
        return count_sums(self, *args, chunks=chunks, **kwargs)

    LatentVAE.count_sums = recording
    return shares


def offsets_of_one_process(model, adata) -> bool:
    """Whether the gene offsets of the shared pass equal those one process estimates (sums to 1e-9)."""
    cells, design = model._encoded_cells(), model._design()
    shared = _gene_offsets.rank_and_world_size
    _gene_offsets.rank_and_world_size = lambda: (0, 1)
    try:
        alone = _gene_offsets.gene_offsets_from_cells(
            model.vae,
            _cells.expression(adata, model.setup),
            (cells.latent, cells.latent_scale, cells.log_library),
            cells.batch,
            model._conditions,
            design.context,
            len(design.contexts),
            model.codec.tokens,
            seed=model.config.seed,
            features=model.module.token_features,
        )
    finally:
        _gene_offsets.rank_and_world_size = shared
    trained = model.module.gene_offsets
    return (
        alone.prior_strength == trained.prior_strength
        and torch.allclose(alone.control, trained.control, rtol=0, atol=1e-6)
        and torch.allclose(alone.shifts.table, trained.shifts.table, rtol=0, atol=1e-6)
        and torch.allclose(alone.shifts.condition_shift, trained.shifts.condition_shift, rtol=0, atol=1e-6)
    )


def say(line: str) -> None:
    """One line to stdout in a single write: the ranks share the pipe, and ``print`` writes the text
    and its newline separately when stdout is unbuffered (``PYTHONUNBUFFERED``), so two ranks'
    lines could interleave ("...: Truerank 1 of 2 ...")."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def weights_hash(model) -> str:
    """SHA-256 of the VAE's and the flow's weights: DDP must leave every rank with the same ones."""
    digest = hashlib.sha256()
    for state in (model.vae.state_dict(), model.module.state_dict()):
        for name in sorted(state):
            digest.update(name.encode() + state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
