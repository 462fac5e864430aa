"""Control cells kept with a trained model: the source of generated cells."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ._trajectories import chain_trajectories

CHAIN_BLOCK = 1024  # trajectories linked by one exact assignment (as training chains its minibatches)


@dataclass
class ControlReference:
    """Latents, log library sizes and batches of the training control cells, by context.

    Attributes
    ----------
    latent
        ``(n, D)`` latent of each control cell.
    log_library
        ``(n,)`` log total counts of each control cell (generated cells draw theirs here).
    batch
        ``(n,)`` VAE batch code of each control cell.
    context
        ``(n,)`` context code of each control cell.
    contexts
        Covariate values of each context code.
    time
        ``(n,)`` experimental time of each control cell (models set up with a ``time_key``),
        or ``None``: generation over time draws control trajectories from it.
    latent_scale
        ``(n, D)`` posterior standard deviations of each control cell's latent (``None``: a
        reference built without them, whose cells are decoded at their latents): a generated
        cell is decoded from a draw around its latent with its source cell's.
    """

    latent: torch.Tensor
    log_library: torch.Tensor
    batch: torch.Tensor
    context: torch.Tensor
    contexts: list[tuple[str, ...]]
    time: torch.Tensor | None = None
    latent_scale: torch.Tensor | None = None

    @classmethod
    def from_cells(
        cls, latent, log_library, batch, context, contexts, time=None, latent_scale=None
    ) -> ControlReference:
        """Build from numpy arrays of the control cells."""
        return cls(
            torch.as_tensor(np.asarray(latent), dtype=torch.float32),
            torch.as_tensor(np.asarray(log_library), dtype=torch.float32),
            torch.as_tensor(np.asarray(batch), dtype=torch.long),
            torch.as_tensor(np.asarray(context), dtype=torch.long),
            list(contexts),
            None if time is None else torch.as_tensor(np.asarray(time), dtype=torch.float64),
            None if latent_scale is None else torch.as_tensor(np.asarray(latent_scale), dtype=torch.float32),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to save."""
        names = ("latent", "log_library", "batch", "context", "time", "latent_scale")
        return {k: getattr(self, k).contiguous() for k in names if getattr(self, k) is not None}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], contexts: list[tuple[str, ...]]) -> ControlReference:
        """Rebuild from saved tensors."""
        return cls(
            tensors["latent"],
            tensors["log_library"],
            tensors["batch"],
            tensors["context"],
            contexts,
            tensors.get("time"),
            tensors.get("latent_scale"),
        )

    @property
    def time_points(self) -> list[float]:
        """Sorted distinct times of the control cells (empty without times)."""
        return [] if self.time is None else [float(t) for t in torch.unique(self.time)]

    def context_code(self, values: tuple[str, ...]) -> int:
        """Code of a context given its covariate values (in covariate-key order)."""
        try:
            return self.contexts.index(tuple(values))
        except ValueError:
            raise ValueError(f"The covariate combination {values} has no control cells in the training data.") from None

    def sample(self, context: int, n: int, generator: torch.Generator, *, over_time: bool = False) -> ControlDraw:
        """Draw ``n`` control cells of ``context`` (with replacement): latent, log library, batch, latent scale.

        With ``over_time``, draw ``n`` control trajectories through every time point in
        :attr:`time_points` instead: at each time point ``n`` control cells are drawn (with
        replacement), and cells of consecutive time points are linked by exact optimal
        transport in the latent (:func:`~cellflow.flow.chain_trajectories`), as in training.

        Returns
        -------
        ControlDraw
            ``latent``, ``log_library``, ``batch`` and ``latent_scale`` (``None`` where the
            reference has none): ``(n, D)``, ``(n,)``, ``(n,)`` and ``(n, D)``; over time
            ``(n, T, D)``, ``(n, T)``, ``(n, T)`` and ``(n, T, D)``.
        """
        if over_time:
            return self._sample_trajectories(context, n, generator)
        pool = torch.nonzero(self.context == context).squeeze(1)
        if len(pool) == 0:
            raise ValueError(f"No control cells in context {self.contexts[context]}.")
        return self._draw(pool[torch.randint(len(pool), (n,), generator=generator)])

    def _draw(self, pick: torch.Tensor) -> ControlDraw:
        scale = None if self.latent_scale is None else self.latent_scale[pick]
        return ControlDraw(self.latent[pick], self.log_library[pick], self.batch[pick], scale)

    def _sample_trajectories(self, context: int, n: int, generator: torch.Generator) -> ControlDraw:
        if self.time is None:
            raise ValueError("This control reference has no times; trajectories need a model set up with time_key.")
        picks = []
        for t in self.time_points:
            pool = torch.nonzero((self.context == context) & (self.time == t)).squeeze(1)
            if len(pool) == 0:
                raise ValueError(f"No control cells in context {self.contexts[context]} at time {t:g}.")
            picks.append(pool[torch.randint(len(pool), (n,), generator=generator)])
        pick = torch.stack(picks, dim=1)  # (n, T), not yet linked
        # Linked in blocks: one exact assignment over all n cells would cost O(n^3) time and n^2 memory.
        linked = []
        for block in torch.split(pick, CHAIN_BLOCK):
            linked.append(block.gather(0, chain_trajectories(self.latent[block][None])[0]))
        return self._draw(torch.cat(linked))


class ControlDraw(NamedTuple):
    """Control cells drawn from a :class:`ControlReference` (see :meth:`ControlReference.sample`)."""

    latent: torch.Tensor
    log_library: torch.Tensor
    batch: torch.Tensor
    latent_scale: torch.Tensor | None
