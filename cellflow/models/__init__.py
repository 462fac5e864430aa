"""The CellFlow model: its configuration, presets, training stages and persistence."""

from ._presets import PRESETS, Preset

__all__ = ["PRESETS", "Preset"]
