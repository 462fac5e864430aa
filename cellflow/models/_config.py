"""Configuration of a CellFlow model (saved as JSON in checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass

from .._constants import COMBINATION_OFFSETS, LIKELIHOODS, POOLINGS, SOURCE_SHIFTS, SOURCES, TOKEN_EMBEDDINGS


@dataclass
class CellFlowConfig:
    """Architecture of a :class:`~cellflow.CellFlow` model (saved as JSON in checkpoints).

    The defaults are :class:`~cellflow.CellFlow`'s arguments; this record has none of its own.

    Attributes
    ----------
    backbone
        Registered name of the velocity network (``"mlp"``, ...).
    backbone_kwargs
        Options of the backbone (JSON-serialisable).
    latent_dim
        Size of the VAE latent space, in which the flow runs.
    likelihood
        Observation model of the VAE: ``"nb"``, ``"zinb"``, ``"poisson"`` or ``"normal"``.
    batch_key
        Column of technical batches given to the VAE as a covariate (or ``None``).
    source
        ``"control"``: the flow carries control cells of the same context to perturbed
        cells; ``"noise"``: it starts from Gaussian noise.
    gene_offsets
        Correct the decoder's expected counts per gene and condition
        (:class:`~cellflow.flow.GeneOffsets`; count likelihoods only).
    combination_offsets
        How an unseen combination's gene offsets add up: ``"sum"`` (the control cells' plus the
        sum of its tokens' changes) or ``"fit"`` (that sum times a factor chosen on the training
        combinations of measured singles). Absent from checkpoints written before it existed,
        which mean ``"sum"``.
    token_embedding
        ``"learned"``, ``"expression"`` (co-expression profile of the perturbed gene in
        control cells) or ``"table"`` (a user table).
    cond_dim
        Size of the condition vector.
    pooling
        Set pooling of the perturbation tokens: ``"mean"``, ``"sum"`` or ``"attention"``.
    vae_hidden, vae_layers
        Width and depth of the scvi-tools encoder and decoder.
    vae_kl_weight
        Weight of the KL term of the VAE's loss at the end of its warm-up (scvi-tools'
        ``max_kl_weight``; 1 is the evidence lower bound), which the default training length
        does not reach (:meth:`~cellflow.train.VAETrainingConfig.kl_warmup_for`).
    seed
        Seed of initialisation and training.
    time_scale
        Multiplies experimental time before its sinusoidal embedding; set from the data
        (``1000 / largest time``) so the time points are well resolved.
    """

    backbone: str
    backbone_kwargs: dict
    latent_dim: int
    likelihood: str
    batch_key: str | None
    source: str
    source_shift: str
    gene_offsets: bool
    token_embedding: str
    cond_dim: int
    pooling: str
    vae_hidden: int
    vae_layers: int
    vae_kl_weight: float
    seed: int
    time_scale: float
    combination_offsets: str = "sum"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r} must be one of {SOURCES}.")
        if self.source_shift not in SOURCE_SHIFTS:
            raise ValueError(f"source_shift={self.source_shift!r} must be one of {SOURCE_SHIFTS}.")
        if self.source_shift != "none" and self.source != "control":
            raise ValueError(
                f"source_shift={self.source_shift!r} moves control cells; with source='noise' use source_shift='none'."
            )
        if self.gene_offsets and self.likelihood == "normal":
            raise ValueError(
                "gene_offsets=True corrects expected counts; likelihood='normal' models log-normalised data. "
                "Use gene_offsets=False, or a count likelihood on counts."
            )
        if self.combination_offsets not in COMBINATION_OFFSETS:
            raise ValueError(f"combination_offsets={self.combination_offsets!r} must be one of {COMBINATION_OFFSETS}.")
        if self.combination_offsets != "sum" and not self.gene_offsets:
            raise ValueError(
                f"combination_offsets={self.combination_offsets!r} sets how gene offsets add up, but gene_offsets is "
                "off. Use gene_offsets=True, or leave combination_offsets='sum'."
            )
        if self.token_embedding not in TOKEN_EMBEDDINGS:
            raise ValueError(
                f"token_embedding={self.token_embedding!r} must be 'learned', 'expression' or a pandas DataFrame "
                "indexed by perturbation name."
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} must be one of {POOLINGS}.")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood={self.likelihood!r} must be one of {LIKELIHOODS}.")
        if not self.vae_kl_weight > 0:
            raise ValueError(f"vae_kl_weight={self.vae_kl_weight} must be positive (1: the evidence lower bound).")
        if self.latent_dim < 1 or self.cond_dim < 1:
            raise ValueError("latent_dim and cond_dim must be positive integers.")
