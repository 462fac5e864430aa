"""Plots of predictions, benchmarks and models, in scanpy's conventions (matplotlib, imported lazily).

Every plot takes ``ax`` (draw on these Axes), ``show`` (``None`` follows
``scanpy.settings.autoshow``) and ``save`` (a file path, or ``True`` for scanpy's ``figdir``),
and returns its Axes (the Figure for several panels) unless the figure was shown.
"""

from ._benchmark import benchmark
from ._conditions import conditions
from ._effect import effect_scatter
from ._embedding import embedding
from ._training import training

__all__ = ["benchmark", "conditions", "effect_scatter", "embedding", "training"]
