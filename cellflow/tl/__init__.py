"""Tools: generate, predict, encode and evaluate."""

from ._encode import encode
from ._evaluate import evaluate
from ._generate import generate
from ._predict import predict

__all__ = ["encode", "evaluate", "generate", "predict"]
