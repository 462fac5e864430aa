"""Velocity networks ``v(z, s, cond)`` and their registry."""

from ._base import Backbone, EncodedCondition
from ._registry import available_backbones, get_backbone, register_backbone

__all__ = ["Backbone", "EncodedCondition", "available_backbones", "get_backbone", "register_backbone"]
