"""Registration of AnnData objects and perturbation-label parsing."""

from ._conditions import Condition, canonical_label, parse_condition
from ._setup import SetupConfig, get_setup, setup

__all__ = ["Condition", "SetupConfig", "canonical_label", "get_setup", "parse_condition", "setup"]
