"""Named settings of a model's size and training length, chosen from the quality-versus-time benchmark."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._constants import PRESET_NAMES


@dataclass(frozen=True)
class Preset:
    """What a preset sets: the ``"mlp"`` backbone's options and the training options of each stage.

    Every entry is a default only: options given to :class:`~cellflow.CellFlow` or
    :meth:`~cellflow.CellFlow.train` win over it.
    """

    mlp_backbone: dict = field(default_factory=dict)
    vae: dict = field(default_factory=dict)
    flow: dict = field(default_factory=dict)
    reflow: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # A shorter VAE (about 3,600 steps) and the same small flow: about half the time of "default".
    "fast": Preset(
        mlp_backbone={"hidden_dim": 128},
        vae={"target_steps": 3600},
        flow={"steps": 1000},
        reflow={"rounds": 0},
    ),
    # The VAE's full length, a 128-wide flow for 1,000 steps, no reflow (generation: Heun, 8 steps).
    "default": Preset(mlp_backbone={"hidden_dim": 128}, flow={"steps": 1000}, reflow={"rounds": 0}),
    # The defaults before the quality-versus-time benchmark: a 256-wide flow, 2,000 steps and one
    # reflow round. Twice "default"'s time and not better on Norman's doubles; its generation
    # (Euler, 4 steps) is up to three times faster, for generating many cells.
    "long": Preset(mlp_backbone={"hidden_dim": 256}, flow={"steps": 2000}, reflow={"rounds": 1}),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``, or a ValueError listing the presets."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not one of {list(PRESET_NAMES)}.")
    return PRESETS[name]
