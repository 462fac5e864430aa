"""Small shared layers: time embedding, modulation, set and condition encoders."""

from ._condition_encoder import ConditionEncoder, EncodedCondition
from ._mamba import Mamba, mamba_kernels_available, selective_scan_parallel, selective_scan_sequential
from ._modulation import AdaLNZero, modulate
from ._set_encoder import SetEncoder, TokenEmbedding, present_tokens
from ._time_embedding import TimestepEmbedder, sinusoidal_features

__all__ = [
    "AdaLNZero",
    "ConditionEncoder",
    "EncodedCondition",
    "Mamba",
    "SetEncoder",
    "TimestepEmbedder",
    "TokenEmbedding",
    "mamba_kernels_available",
    "modulate",
    "present_tokens",
    "selective_scan_parallel",
    "selective_scan_sequential",
    "sinusoidal_features",
]
