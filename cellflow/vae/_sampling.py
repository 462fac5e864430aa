"""Drawing counts from the VAE's likelihood parameters: fast, reproducible whatever the thread count."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import torch

SAMPLING_CHUNK_ROWS = 1024  # fixed, so the counts do not depend on the number of threads


def offset_factor(mean: torch.Tensor, gene_offset: torch.Tensor) -> torch.Tensor:
    """Per-cell, per-gene factors ``exp(offset)``, rescaled so that each cell's expected total stays the same."""
    moved = mean * torch.exp(gene_offset)
    return torch.exp(gene_offset) * (mean.sum(dim=-1, keepdim=True) / moved.sum(dim=-1, keepdim=True))


def sample_likelihood(px, likelihood: str, generator: torch.Generator | None, *, sparse: bool, factor=None):
    """Draw counts from scvi-tools' count likelihood objects (their own ``mu``, ``theta``, ``zi_logits``, ``rate``).

    ``factor`` (broadcastable to the means, or ``None``) multiplies the means first.
    """
    mean = px.rate if likelihood == "poisson" else px.mu
    if factor is not None:
        mean = mean * factor
    params = {"mu": mean.detach().cpu().numpy()}
    if likelihood != "poisson":
        params["theta"] = px.theta.expand_as(mean).detach().cpu().numpy()
    if likelihood == "zinb":
        params["zi_logits"] = px.zi_logits.expand_as(mean).detach().cpu().numpy()
    counts = sample_counts(params, generator, sparse=sparse)
    return counts if sparse else torch.from_numpy(counts).to(device=mean.device, dtype=mean.dtype)


def sample_counts(
    params: dict[str, np.ndarray], generator: torch.Generator | None, *, sparse: bool = False
) -> np.ndarray | sp.csr_matrix:
    """Counts (float32, cells x genes) from Poisson ``mu``, NB ``mu, theta`` or ZINB ``mu, theta, zi_logits``.

    Drawn with numpy's generators on fixed blocks of rows in a thread pool (numpy releases the
    GIL while it fills arrays), each block with its own generator seeded from ``generator``: the
    same seed gives the same counts whatever the thread count. NB(mu, theta) is drawn as
    Poisson(Gamma(shape=theta, scale=mu / theta)). On a CPU this is faster than torch's serial
    gamma and Poisson samplers (the generation benchmark splits off the sampling). With
    ``sparse=True`` each block is compressed to CSR in its
    thread as soon as it is drawn (the same counts, as a ``scipy.sparse.csr_matrix``): the
    dense matrix is never formed, and the compression runs in parallel instead of on one
    thread afterwards.
    """
    mu = params["mu"]
    starts = range(0, mu.shape[0], SAMPLING_CHUNK_ROWS)
    seeds = torch.randint(0, 2**62, (len(starts),), generator=generator).tolist()
    out = [None] * len(starts) if sparse else np.empty(mu.shape, dtype=np.float32)

    def fill(block: int) -> None:
        rows = slice(starts[block], starts[block] + SAMPLING_CHUNK_ROWS)
        rng = np.random.default_rng(seeds[block])
        rate = mu[rows]
        if "theta" in params:
            theta = np.maximum(params["theta"][rows], 1e-8)
            rate = rng.standard_gamma(theta, dtype=np.float32) * (rate / theta)
        drawn = rng.poisson(rate)
        if "zi_logits" in params:
            dropout = 1.0 / (1.0 + np.exp(-params["zi_logits"][rows]))  # probability of a structural zero
            drawn[rng.random(drawn.shape, dtype=np.float32) < dropout] = 0
        if sparse:
            out[block] = _dense_rows_to_csr(drawn)
        else:
            out[rows] = drawn

    workers = max(1, min(torch.get_num_threads(), len(starts)))
    if workers == 1:
        for block in range(len(starts)):
            fill(block)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(fill, range(len(starts))))
    if not sparse:
        return out
    if not out:
        return sp.csr_matrix(mu.shape, dtype=np.float32)
    return sp.vstack(out, format="csr")


def _dense_rows_to_csr(block: np.ndarray) -> sp.csr_matrix:
    """CSR (float32) of a C-ordered dense block, built from its nonzero mask without scipy's COO intermediate."""
    nonzero = block != 0
    indptr = np.zeros(block.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.count_nonzero(nonzero, axis=1), out=indptr[1:])
    indices = np.nonzero(nonzero)[1].astype(np.int32)
    return sp.csr_matrix((block[nonzero].astype(np.float32), indices, indptr), shape=block.shape)
