"""Training options, each with its one default: the VAE, the flow and reflow.

:meth:`cellflow.CellFlow.train` takes the few options users change as arguments and the
others as ``vae_kwargs``, ``flow_kwargs`` and ``reflow_kwargs`` (scvi-tools' manner); all of
them end up in these dataclasses, which check their values on construction, before any
training starts. The allowed values are defined here once and reused by the command line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .._constants import COUPLINGS, PRECISIONS, SOLVER_METHODS

MIN_EPOCHS = 4
"""Fewest epochs of the VAE's default length (see :attr:`VAETrainingConfig.min_epochs`)."""


def _from_kwargs(cls, kwargs: dict | None, what: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs or {}) - known)
    if unknown:
        raise TypeError(f"{what} got unknown option(s) {unknown}; the options are {sorted(known)}.")
    return cls(**(kwargs or {}))


@dataclass(frozen=True)
class VAETrainingConfig:
    """Optimisation of the VAE (scvi-tools' training plan).

    Attributes
    ----------
    epochs
        Epochs; by default about ``target_steps`` gradient steps, at least ``min_epochs``
        and at most 400 epochs (:meth:`epochs_for`): the regime in which scvi-tools' VAE
        reconstructs sparse Perturb-seq counts well (fewer steps leave the decoder spreading
        counts over too many genes, which no flow can repair). A small screen thus takes
        many passes over its cells, a large one ``min_epochs``, so the time per cell stays
        flat as screens grow.
    batch_size
        Global minibatch size (scvi-tools' default); a distributed run splits it over its
        processes, so the steps per epoch, and with them this rule, do not depend on the
        number of devices.
    target_steps
        Gradient steps the default number of epochs aims at.
    min_epochs
        Fewest epochs of the default length: what a screen too large for ``target_steps``
        to cover many times still gets.
    lr
        Adam's learning rate (scvi-tools' default).
    init_dispersion
        Start the negative binomial's gene dispersions at their method-of-moments estimate on
        the training counts (one pass over them) rather than scvi-tools' random start, from
        which Adam takes thousands of steps to reach the near-Poisson dispersion of sparse
        genes; until then the VAE samples overdispersed counts and biases every mean.
    """

    epochs: int | None = None
    batch_size: int = 128
    target_steps: int = 8000
    min_epochs: int = MIN_EPOCHS
    lr: float = 1e-3
    init_dispersion: bool = True

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"vae epochs={self.epochs} must be at least 1 (or None for the default).")
        if self.batch_size < 2 or self.target_steps < 1 or self.min_epochs < 1:
            raise ValueError(
                f"vae batch_size={self.batch_size} must be at least 2, target_steps={self.target_steps} "
                f"and min_epochs={self.min_epochs} at least 1."
            )
        if not self.lr > 0:
            raise ValueError(f"vae lr={self.lr} must be positive.")

    @classmethod
    def from_kwargs(cls, kwargs: dict | None) -> VAETrainingConfig:
        """Build from keyword options, refusing unknown ones with the list of known ones."""
        return _from_kwargs(cls, kwargs, "vae_kwargs")

    def epochs_for(self, n_cells: int) -> int:
        """Epochs on ``n_cells`` cells: ``epochs``, else about ``target_steps`` steps, within ``[min_epochs, 400]``."""
        if self.epochs is not None:
            return self.epochs
        return int(min(max(round(self.target_steps * self.batch_size / max(1, n_cells)), self.min_epochs), 400))

    def kl_warmup_for(self, epochs: int, n_cells: int) -> dict[str, int | None]:
        """How the KL weight rises to ``vae_kl_weight``: ``kl_warmup_epochs`` or ``kl_warmup_steps`` of the VAE's fit.

        scvi-tools' 400 epochs, which the default length never reaches: the weight ends at
        ``epochs / 400`` of its maximum. Below 50 epochs (large screens) the warm-up is counted
        in steps and spans eight times the training, ``8 * epochs * ceil(n_cells / batch_size)``
        steps, so the weight rises smoothly within even one epoch and ends at about an eighth of
        its maximum, as at 50 epochs: the latent space a screen gets does not loosen with its size.
        """
        if epochs >= 50:
            return {"kl_warmup_epochs": 400, "kl_warmup_steps": None}
        return {"kl_warmup_epochs": None, "kl_warmup_steps": 8 * epochs * -(-n_cells // self.batch_size)}


@dataclass(frozen=True)
class FlowTrainingConfig:
    """Optimisation of the flow.

    Attributes
    ----------
    steps
        Gradient steps (the most, with early stopping).
    groups_per_batch, cells_per_group
        A minibatch holds ``groups_per_batch`` conditions (in their contexts) with
        ``cells_per_group`` target cells each, with their source partners. For a backbone
        over time: ``cells_per_group`` trajectories per condition (cells drawn at every time
        point and chained by optimal transport), so a step sees ``T`` times as many cells.
    lr, weight_decay
        AdamW's learning rate and weight decay.
    warmup_steps
        Linear warm-up of the learning rate (at most a tenth of ``steps``), then cosine decay
        to a tenth of ``lr``.
    coupling
        How sources are paired with targets; ``None`` (default): ``"ot"`` where it applies,
        else ``"minibatch_ot"``. ``"ot"``: every cell of a condition is paired
        once, by an exact optimal-transport assignment over the whole populations, with a
        control cell of its context and keeps that partner for the whole run (large
        conditions in blocks of 1,024). ``"minibatch_ot"``: the cells of each minibatch are
        re-paired by exact OT at every step. ``"random"``: independent pairs. Re-pairing per
        minibatch averages each control cell's changing partners, which contracts the
        generated cells towards their condition's mean where conditions have few cells.
        ``"ot"`` needs fixed source cells, so it is refused with ``source="noise"`` and for
        backbones over time (their trajectories are re-chained every minibatch).
    condition_dropout
        Probability of replacing a condition by the null condition: it learns the flow of an
        average condition, which enables classifier-free guidance at generation and
        regularises the condition's influence.
    validation_fraction
        Share of the perturbed conditions left out as a validation split; 0 trains on all of
        them for ``steps``. With a split, the loss on fixed minibatches of the validation
        conditions is computed every ``validation_every`` steps, training stops after
        ``patience`` checks without improvement, and the best weights are kept.
    patience, validation_every
        Early stopping: checks without improvement before stopping; steps between checks.
    precision
        Arithmetic of the flow's training, Lightning's names: ``"32-true"``, ``"bf16-mixed"``
        or ``"16-mixed"`` (autocast; pairing and the loss stay in float32).
    distill_steps
        ``k``: train the velocity only at the flow times of a ``k``-step Euler solve
        (distillation, used by the last reflow round); ``None`` at every time.
    """

    steps: int = 2000
    groups_per_batch: int = 2
    cells_per_group: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    coupling: str | None = None
    condition_dropout: float = 0.2
    validation_fraction: float = 0.0
    patience: int = 5
    validation_every: int = 100
    precision: str = "32-true"
    distill_steps: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} must be one of {PRECISIONS} (Lightning's names).")
        if self.coupling is not None and self.coupling not in COUPLINGS:
            raise ValueError(f"coupling={self.coupling!r} must be one of {COUPLINGS}.")
        if self.steps < 1:
            raise ValueError(f"flow steps={self.steps} must be at least 1.")
        if self.groups_per_batch < 1 or self.cells_per_group < 1:
            raise ValueError(
                f"groups_per_batch={self.groups_per_batch} and cells_per_group={self.cells_per_group} "
                "must be at least 1."
            )
        if not self.lr >= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError(f"lr={self.lr}, weight_decay and warmup_steps must be non-negative.")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"condition_dropout={self.condition_dropout} must lie in [0, 1).")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} must lie in [0, 1) (0: no early stopping)."
            )
        if self.patience < 1 or self.validation_every < 1:
            raise ValueError(
                f"patience={self.patience} and validation_every={self.validation_every} must be at least 1."
            )
        if self.distill_steps is not None and self.distill_steps < 1:
            raise ValueError(f"distill_steps={self.distill_steps} must be at least 1 (or None).")

    @classmethod
    def from_kwargs(cls, kwargs: dict | None) -> FlowTrainingConfig:
        """Build from keyword options, refusing unknown ones with the list of known ones."""
        return _from_kwargs(cls, kwargs, "flow_kwargs")

    def replace(self, **changes) -> FlowTrainingConfig:
        """A copy with some options changed (checked again)."""
        return type(self)(**{**asdict(self), **changes})


@dataclass(frozen=True)
class ReflowConfig:
    """Reflow: straighten a trained flow on pairs drawn from its own ODE (Liu et al. 2023).

    Attributes
    ----------
    rounds
        Reflow rounds (``k`` in ``k``-rectified flow); 0 in :meth:`~cellflow.CellFlow.train`
        skips reflow.
    steps
        Gradient steps per round; ``None``: half of the flow's steps.
    pairs_per_group
        Pairs (cells, or trajectories for a backbone over time) drawn per training group and round.
    method, ode_steps
        Solver that produces the pairs (accurate: the pairs are the new targets).
    distill_steps
        With ``k``, the last round trains the velocity only at the flow times of a
        ``k``-step Euler solve, so ``method="euler", steps=k`` lands on the paired end points.
    lr
        Learning rate (continuing from the trained weights).
    """

    rounds: int = 1
    steps: int | None = None
    pairs_per_group: int = 256
    method: str = "heun"
    ode_steps: int = 16
    distill_steps: int | None = None
    lr: float = 5e-4

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError(f"reflow rounds={self.rounds} must be at least 0.")
        if (self.steps is not None and self.steps < 1) or self.pairs_per_group < 1 or self.ode_steps < 1:
            raise ValueError(
                f"reflow steps, pairs_per_group and ode_steps must be at least 1, got steps={self.steps}, "
                f"pairs_per_group={self.pairs_per_group}, ode_steps={self.ode_steps}."
            )
        if self.method not in SOLVER_METHODS:
            raise ValueError(f"reflow method={self.method!r} must be one of {SOLVER_METHODS}.")
        if self.distill_steps is not None and self.distill_steps < 1:
            raise ValueError(f"distill_steps={self.distill_steps} must be at least 1 (or None).")
        if not self.lr > 0:
            raise ValueError(f"reflow lr={self.lr} must be positive.")

    @classmethod
    def from_kwargs(cls, kwargs: dict | None) -> ReflowConfig:
        """Build from keyword options, refusing unknown ones with the list of known ones."""
        return _from_kwargs(cls, kwargs, "reflow_kwargs")

    def steps_after(self, flow_steps: int) -> int:
        """Gradient steps per round after a flow trained for ``flow_steps``."""
        return self.steps if self.steps is not None else max(1, flow_steps // 2)
