"""Tools: generate, encode and evaluate."""

from ._encode import encode
from ._generate import generate

__all__ = ["encode", "generate"]
from ._evaluate import evaluate  # noqa: E402

__all__ += ["evaluate"]
