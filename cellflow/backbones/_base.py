"""The interface every velocity backbone implements."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import EncodedCondition

__all__ = ["Backbone", "EncodedCondition"]


class Backbone(nn.Module):
    """Base class of velocity networks ``v(z, s, cond)``.

    Parameters
    ----------
    dim
        Size of the state ``z`` (the latent dimension).
    cond_dim
        Size ``C`` of :attr:`EncodedCondition.vector` and of each token.

    Notes
    -----
    Subclasses implement :meth:`forward` and accept their own keyword options, which
    must be JSON-serialisable (they are saved in checkpoints). A backbone whose state is a
    time course (``z`` of shape ``(B, T, D)``) sets the class attribute
    ``over_time = True``. A backbone that accepts one condition for the whole
    batch (``cond`` with batch size 1 and a scalar ``s``, broadcast over the rows of ``z``)
    sets ``broadcasts_condition = True``: generation then computes the condition's
    modulation once per solver step instead of once per cell.
    """

    over_time: bool = False
    broadcasts_condition: bool = False

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.cond_dim = cond_dim

    def forward(self, z: torch.Tensor, s: torch.Tensor, cond: EncodedCondition) -> torch.Tensor:
        """Velocity at state ``z`` (``(B, D)``), flow time ``s`` (``(B,)``) and condition ``cond``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(z, s, cond).")
