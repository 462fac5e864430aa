"""Tools: generate, encode and evaluate."""

from ._encode import encode
from ._generate import generate

__all__ = ["encode", "generate"]
