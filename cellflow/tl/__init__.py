"""Tools: generate, encode and evaluate."""

from ._encode import encode
from ._evaluate import evaluate
from ._generate import generate

__all__ = ["encode", "evaluate", "generate"]
