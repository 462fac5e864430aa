"""Preprocessing: register an AnnData with cellflow, and parse its perturbation labels."""

from ._conditions import Condition, canonical_label, parse_condition
from ._setup import SetupConfig, get_setup, setup

__all__ = ["Condition", "SetupConfig", "canonical_label", "get_setup", "parse_condition", "setup"]
