"""The flow: one torch module that owns the conditional velocity field, its loss and its sampler.

The flow runs in coordinates relative to latent arithmetic. A condition's cells are
modelled as control cells of their context moved by the condition's token shift
(:class:`~cellflow.flow.TokenShifts`, scGen-style mean shifts in the VAE latent) plus what
the velocity field adds: training subtracts the shift from the targets, sampling adds it back
after the ODE. A perturbation also changes how many counts a cell has (its library size, an
input of the decoder the latent does not hold); generated cells take their source's library
size moved by the condition's mean change of the log library size, estimated the same way, and
what the condition does to single genes that the latent does not carry is a per-gene correction
of the decoder's expected counts (:class:`~cellflow.flow.GeneOffsets`).
Everything that touches the velocity (classifier-free guidance, the flow-matching loss, the ODE
solve, the shift) lives here, so training, reflow, generation and the benchmarks all call the
same code.

States are per cell, ``(B, D)``, for backbones that take experimental time as part of the
condition, and whole trajectories, ``(B, T, D)`` through the ``T`` training time points, for
backbones over time (``backbone.over_time``); the module is the one place that tells them
apart.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .._constants import SOURCES
from ..backbones import Backbone
from ..nn import ConditionEncoder, EncodedCondition
from ._gene_offsets import GeneOffsets
from ._path import LinearPath
from ._reference import ControlReference
from ._solver import ODESolver
from ._token_shift import TokenShifts


@dataclass
class ConditionBatch:
    """Conditions in their contexts, as the network and the token shifts read them (``B`` rows).

    Attributes
    ----------
    token_ids, doses, mask
        ``(B, K)`` perturbation tokens (see :meth:`~cellflow.pp._codec.ConditionCodec.encode_conditions`).
    covariates
        ``(B, n_covariates)`` integer covariate codes.
    time
        ``(B,)`` experimental time (zero without a ``time_key``, and for backbones over time).
    context
        ``(B,)`` context code (index into the control reference's contexts).
    """

    token_ids: torch.Tensor
    doses: torch.Tensor
    mask: torch.Tensor
    covariates: torch.Tensor
    time: torch.Tensor
    context: torch.Tensor

    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, rows) -> ConditionBatch:
        return ConditionBatch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def to(self, device) -> ConditionBatch:
        """The same conditions on ``device``."""
        return ConditionBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def tensors(self) -> dict[str, torch.Tensor]:
        """Its tensors by field name (to register as buffers or to save)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class SamplingInfo:
    """What generation needs to know about how the flow was trained (saved with the model).

    Attributes
    ----------
    null_condition
        The null condition was trained (condition dropout above 0), so classifier-free
        guidance is available.
    reflow_rounds
        Reflow rounds since the flow was last trained from scratch: a reflowed flow is straight
        enough for few Euler steps.
    distill_steps
        ``k`` when the last reflow round was distilled to a ``k``-step Euler solve, else 0.
    """

    null_condition: bool = False
    reflow_rounds: int = 0
    distill_steps: int = 0

    def solver(self, method: str | None = None, steps: int | None = None) -> tuple[str, int]:
        """The solver used when none is given: few Euler steps once reflowed, else Heun with 8 steps."""
        reflowed = self.reflow_rounds > 0
        if method is None:
            method = "euler" if reflowed else "heun"
        if steps is None:
            steps = (self.distill_steps or 4) if reflowed and method == "euler" else 8
        return method, int(steps)


class FlowModule(nn.Module):
    """Conditional rectified flow in a latent space, relative to latent arithmetic.

    Parameters
    ----------
    encoder
        Encodes conditions (perturbation set, covariates, time).
    backbone
        The velocity network ``v(z, s, cond)``.
    source
        ``"control"``: the flow carries control cells of the condition's context;
        ``"noise"``: it starts from standard Gaussian noise.
    time_scale
        Experimental times are multiplied by ``time_scale / 1000`` before a backbone over
        time reads them (the latest training time point then maps to about 1).

    Attributes
    ----------
    shifts
        Token shifts the flow runs relative to (``None``: the flow carries the sources the
        whole way).
    library_shifts
        Token shifts of the log library size (``D = 1``): what a condition adds to its source
        cells' log library sizes at generation (``None`` until the flow is trained).
    gene_offsets
        Corrections of the decoder's expected counts per gene and condition
        (:class:`GeneOffsets`; ``None``: decoded as the VAE decodes).
    reference
        Control cells of the training data, by context: the sources of generated cells.
    sampling
        How the flow was trained, as generation needs it (:class:`SamplingInfo`).
    """

    def __init__(
        self, encoder: ConditionEncoder, backbone: Backbone, *, source: str = "control", time_scale: float = 1000.0
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"source={source!r} must be one of {SOURCES}.")
        self.encoder, self.backbone = encoder, backbone
        self.source, self.time_scale = source, float(time_scale)
        self.path = LinearPath()
        self.shifts: TokenShifts | None = None
        self.library_shifts: TokenShifts | None = None
        self.gene_offsets: GeneOffsets | None = None
        self.reference: ControlReference | None = None
        self.sampling = SamplingInfo()
        self.register_buffer("times", torch.zeros(0), persistent=False)

    @property
    def over_time(self) -> bool:
        """Whether a state is a whole trajectory ``(T, D)`` rather than one cell ``(D,)``."""
        return self.backbone.over_time

    @property
    def token_features(self) -> np.ndarray | None:
        """``(n_tokens, F)`` the token embedding's feature table (standardised), or ``None`` for learned tokens.

        Token shifts, library shifts and gene offsets of tokens measured nowhere are predicted
        from it (:meth:`~cellflow.flow.TokenShifts.from_cells`).
        """
        embedding = self.encoder.set_encoder.token_embedding
        return None if embedding.feature_dim is None else embedding.features.detach().cpu().double().numpy()

    def snapshot(self) -> dict:
        """A copy of everything the module holds (weights, shifts, reference, sampling), for :meth:`restore`."""
        return {
            "weights": {k: v.detach().clone() for k, v in self.state_dict().items()},
            "shifts": self.shifts,
            "library_shifts": self.library_shifts,
            "gene_offsets": self.gene_offsets,
            "reference": self.reference,
            "sampling": SamplingInfo(**vars(self.sampling)),
        }

    def restore(self, snapshot: dict) -> None:
        """Put the module back as it was when ``snapshot`` was taken (e.g. after an interrupted training stage)."""
        with torch.no_grad():
            self.load_state_dict(snapshot["weights"])
        self.shifts, self.sampling = snapshot["shifts"], snapshot["sampling"]
        self.library_shifts, self.gene_offsets = snapshot["library_shifts"], snapshot["gene_offsets"]
        self.reference = None
        self.times = torch.zeros(0, device=self.times.device)
        if snapshot["reference"] is not None:
            self.set_reference(snapshot["reference"])
        self.eval()

    def set_reference(self, reference: ControlReference) -> None:
        """Keep the training control cells (the sources of generation) and the time points they define."""
        self.reference = reference
        points = np.asarray(reference.time_points, dtype=np.float32)
        self.times = torch.as_tensor(points, device=self.times.device) * (self.time_scale / 1000.0)

    # ------------------------------------------------------------------ the velocity field
    def condition(self, conditions: ConditionBatch, drop: torch.Tensor | None = None) -> EncodedCondition:
        """Encode conditions; rows flagged in ``drop`` get the null condition."""
        c = conditions
        return self.encoder(c.token_ids, c.doses, c.mask, c.covariates, c.time, drop=drop)

    def null_condition(self, conditions: ConditionBatch) -> EncodedCondition:
        """The null condition (learnt with condition dropout) in the shape of ``conditions``."""
        return self.condition(
            conditions, drop=torch.ones(len(conditions), dtype=torch.bool, device=conditions.doses.device)
        )

    def field(self, z: torch.Tensor, s: torch.Tensor, cond: EncodedCondition) -> torch.Tensor:
        """The backbone's velocity ``v(z, s, cond)`` (``(B, D)``, or ``(B, T, D)`` over time)."""
        if self.over_time:
            return self.backbone(z, s, cond, self.times)
        return self.backbone(z, s, cond)

    def velocity(
        self,
        z: torch.Tensor,
        s: torch.Tensor,
        cond: EncodedCondition,
        *,
        null: EncodedCondition | None = None,
        guidance: float = 1.0,
    ) -> torch.Tensor:
        """Velocity with classifier-free guidance: ``v(null) + guidance * (v(cond) - v(null))``.

        ``guidance=1`` evaluates the condition alone (``null`` is then not needed).
        """
        if guidance == 1.0:
            return self.field(z, s, cond)
        if null is None:
            raise ValueError("guidance != 1 needs the null condition (null=module.null_condition(...)).")
        unconditional = self.field(z, s, null)
        return unconditional + guidance * (self.field(z, s, cond) - unconditional)

    def loss(self, z0: torch.Tensor, z1: torch.Tensor, s: torch.Tensor, cond: EncodedCondition) -> torch.Tensor:
        """Flow-matching loss: mean squared error of the velocity on the straight paths ``z0 -> z1`` at times ``s``."""
        path = self.path.sample(z0, z1, s)
        return torch.nn.functional.mse_loss(self.field(path.zs, s, cond), path.velocity)

    # ------------------------------------------------------------------ latent arithmetic
    def shift(self, conditions: ConditionBatch) -> torch.Tensor | None:
        """Token shift of each row: ``(B, D)``, over time ``(B, T, D)``; ``None`` without shifts."""
        return self._shift_rows(self.shifts, conditions)

    def library_shift(self, conditions: ConditionBatch) -> torch.Tensor | None:
        """Change of the log library size of each row: ``(B,)``, over time ``(B, T)``; ``None`` without."""
        shift = self._shift_rows(self.library_shifts, conditions)
        return None if shift is None else shift.squeeze(-1)

    def gene_offset(self, conditions: ConditionBatch) -> torch.Tensor | None:
        """Log-scale correction of every gene's expected counts for each row: ``(B, G)``, over time ``(B, T, G)``.

        ``None`` without gene offsets; pass it to :meth:`~cellflow.vae.LatentVAE.decode`.
        """
        return self._shift_rows(self.gene_offsets, conditions)

    def _shift_rows(self, shifts: TokenShifts | GeneOffsets | None, conditions: ConditionBatch) -> torch.Tensor | None:
        if shifts is None:
            return None
        c = conditions
        if not self.over_time:
            return shifts(c.token_ids, c.doses, c.mask, c.context)
        # Time-resolved shifts: row context * T + k of the table is the shift at time point k.
        n_times = len(self.times)
        rows = c.context[:, None] * n_times + torch.arange(n_times, device=c.context.device)
        per_row = [x.repeat_interleave(n_times, dim=0) for x in (c.token_ids, c.doses, c.mask)]
        return shifts(*per_row, rows.reshape(-1)).view(len(c), n_times, -1)

    def relative(self, z: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
        """States in the flow's coordinates: minus their condition's shift (training targets)."""
        return z if shift is None else z - shift

    # ------------------------------------------------------------------ sampling
    def noise(self, shape, generator: torch.Generator | None = None, like: torch.Tensor | None = None) -> torch.Tensor:
        """Standard Gaussian sources of the given shape (``source="noise"``)."""
        z = torch.randn(shape, generator=generator) if generator is not None else torch.randn(shape)
        return z if like is None else z.to(like)

    @torch.no_grad()
    def transport(
        self,
        z0: torch.Tensor,
        cond: EncodedCondition,
        *,
        method: str,
        steps: int,
        null: EncodedCondition | None = None,
        guidance: float = 1.0,
    ) -> tuple[torch.Tensor, int]:
        """Carry sources ``z0`` along the flow's ODE from ``s = 0`` to ``1``, in the flow's coordinates.

        ``cond`` (and ``null``) has one row per row of ``z0``, or a single row for a backbone that
        broadcasts one condition over the batch. Returns the end points and the number of
        velocity evaluations.
        """
        broadcast = self.backbone.broadcasts_condition and len(cond.vector) == 1 and len(z0) != 1

        def velocity(z, s):
            if broadcast:
                s = s[:1]  # the solver's one flow time, for the one condition
            return self.velocity(z, s, cond, null=null, guidance=guidance)

        solver = ODESolver(velocity)
        z1 = solver.sample(z0, method=method, steps=steps)
        return z1, solver.last_nfe

    @torch.no_grad()
    def sample(
        self,
        condition: ConditionBatch,
        n: int,
        generator: torch.Generator,
        *,
        method: str,
        steps: int,
        guidance: float = 1.0,
    ) -> GeneratedLatents:
        """Generate ``n`` cells (or trajectories) of one condition in its context.

        Draws sources (control cells of the context with their library sizes and batches, or
        noise), solves the ODE and adds the condition's shift back; the sources' log library
        sizes move by the condition's library shift.

        Returns
        -------
        GeneratedLatents
            ``(n, D)`` latents (``(n, T, D)`` over time), ``(n,)`` (``(n, T)``) log library sizes,
            the sources' VAE batches and posterior standard deviations (``None`` for a reference
            without them), and the number of velocity evaluations.
        """
        if len(condition) != 1:
            raise ValueError(f"sample takes one condition, got {len(condition)}.")
        if self.reference is None:
            raise RuntimeError("The flow has no control reference: train it first.")
        context = int(condition.context[0])
        z0, log_library, batch, scale = self.reference.sample(context, n, generator, over_time=self.over_time)
        if self.source == "noise":
            z0 = self.noise(z0.shape, generator)
        z1, nfe = self.carry(z0, condition, method=method, steps=steps, guidance=guidance)
        return GeneratedLatents(z1, self.move_library(log_library, condition), batch, scale, nfe)

    def move_library(self, log_library: torch.Tensor, condition: ConditionBatch) -> torch.Tensor:
        """Log library sizes of cells carried to one condition: their own plus the condition's library shift."""
        shift = self.library_shift(condition)
        return log_library if shift is None else log_library + shift[0].to(log_library)

    @torch.no_grad()
    def carry(
        self, z0: torch.Tensor, condition: ConditionBatch, *, method: str, steps: int, guidance: float = 1.0
    ) -> tuple[torch.Tensor, int]:
        """Carry given sources ``z0`` to one condition: the ODE in the flow's coordinates, then the shift back.

        ``z0`` are cells (or trajectories) of the condition's context in the latent space: control
        cells drawn by :meth:`sample`, or a user's own cells for their counterfactual. Returns the
        end points (on the CPU) and the number of velocity evaluations.
        """
        n = len(z0)
        device = self.times.device  # sources drawn on the CPU (the same cells on any device), the flow where it lives
        z0, condition = z0.to(device), condition.to(device)
        cond = self.condition(condition)
        null = self.null_condition(condition) if guidance != 1.0 else None
        if self.over_time or not self.backbone.broadcasts_condition:  # one row of the condition per source
            cond = _repeat_rows(cond, n)
            null = None if null is None else _repeat_rows(null, n)
        z1, nfe = self.transport(z0, cond, method=method, steps=steps, null=null, guidance=guidance)
        shift = self.shift(condition)
        if shift is not None:  # back from the flow's coordinates
            z1 = z1 + shift
        return z1.cpu(), nfe


class GeneratedLatents(NamedTuple):
    """Cells generated by :meth:`FlowModule.sample`, before decoding."""

    latent: torch.Tensor
    log_library: torch.Tensor
    batch: torch.Tensor
    latent_scale: torch.Tensor | None
    nfe: int


def _repeat_rows(cond: EncodedCondition, n: int) -> EncodedCondition:
    """A one-row condition as ``n`` rows (a view, no copy)."""
    return EncodedCondition(*(x.expand(n, *x.shape[1:]) for x in cond))
