"""Control cells kept with a trained model: the source of generated cells."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
    """

    latent: torch.Tensor
    log_library: torch.Tensor
    batch: torch.Tensor
    context: torch.Tensor
    contexts: list[tuple[str, ...]]

    @classmethod
    def from_cells(cls, latent, log_library, batch, context, contexts) -> ControlReference:
        """Build from numpy arrays of the control cells."""
        return cls(
            torch.as_tensor(np.asarray(latent), dtype=torch.float32),
            torch.as_tensor(np.asarray(log_library), dtype=torch.float32),
            torch.as_tensor(np.asarray(batch), dtype=torch.long),
            torch.as_tensor(np.asarray(context), dtype=torch.long),
            list(contexts),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to save."""
        return {k: getattr(self, k).contiguous() for k in ("latent", "log_library", "batch", "context")}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], contexts: list[tuple[str, ...]]) -> ControlReference:
        """Rebuild from saved tensors."""
        return cls(tensors["latent"], tensors["log_library"], tensors["batch"], tensors["context"], contexts)

    def context_code(self, values: tuple[str, ...]) -> int:
        """Code of a context given its covariate values (in covariate-key order)."""
        try:
            return self.contexts.index(tuple(values))
        except ValueError:
            raise ValueError(f"The covariate combination {values} has no control cells in the training data.") from None

    def sample(self, context: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Draw ``n`` control cells of ``context`` (with replacement): latent, log library, batch."""
        pool = torch.nonzero(self.context == context).squeeze(1)
        if len(pool) == 0:
            raise ValueError(f"No control cells in context {self.contexts[context]}.")
        pick = pool[torch.randint(len(pool), (n,), generator=generator)]
        return self.latent[pick], self.log_library[pick], self.batch[pick]
