"""Velocity networks ``v(z, s, cond)`` and their registry (the built-in ones register themselves on import)."""

from . import _mamba, _mlp, _set_attention  # noqa: F401
from ._base import Backbone, EncodedCondition
from ._registry import available_backbones, get_backbone, register_backbone

__all__ = ["Backbone", "EncodedCondition", "available_backbones", "get_backbone", "register_backbone"]
