"""cellflow: predict single-cell perturbation responses with latent rectified flows.

``import cellflow as cf`` is cheap: the namespaces (``cf.pp``, ``cf.tl``, ``cf.pl``,
``cf.datasets``, ``cf.metrics``, ``cf.evaluation``) and :class:`cf.CellFlow` load on first use, so torch,
scvi-tools and Lightning are imported only when a model is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = {"pp", "tl", "pl", "datasets", "metrics", "evaluation"}
_ATTRIBUTES = {"CellFlow": "cellflow.models._cellflow"}

__all__ = ["CellFlow", "datasets", "evaluation", "metrics", "pl", "pp", "tl", "__version__"]

if TYPE_CHECKING:  # pragma: no cover - for static analysis only
    from . import datasets, evaluation, metrics, pl, pp, tl
    from .models._cellflow import CellFlow


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
    elif name in _ATTRIBUTES:
        module = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    else:
        raise AttributeError(f"module 'cellflow' has no attribute {name!r}")
    globals()[name] = module  # cache: later look-ups skip __getattr__
    return module


def __dir__() -> list[str]:
    return sorted(__all__)
