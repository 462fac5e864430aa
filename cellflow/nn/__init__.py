"""Small shared layers: time embedding, modulation, set and condition encoders."""

from ._condition_encoder import ConditionEncoder
from ._modulation import AdaLNZero, modulate
from ._set_encoder import SetEncoder, TokenEmbedding, present_tokens
from ._time_embedding import TimestepEmbedder, sinusoidal_features

__all__ = [
    "AdaLNZero",
    "ConditionEncoder",
    "SetEncoder",
    "TimestepEmbedder",
    "TokenEmbedding",
    "modulate",
    "present_tokens",
    "sinusoidal_features",
]
