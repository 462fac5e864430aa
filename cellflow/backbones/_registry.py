"""Backbones by name, so users and checkpoints can refer to them with a string."""

from __future__ import annotations

from collections.abc import Callable

from ._base import Backbone

_REGISTRY: dict[str, type[Backbone]] = {}


def register_backbone(name: str) -> Callable[[type[Backbone]], type[Backbone]]:
    """Class decorator that makes a :class:`Backbone` available as ``backbone=name``.

    Parameters
    ----------
    name
        The name users pass to :class:`cellflow.CellFlow`.

    Examples
    --------
    >>> from cellflow.backbones import Backbone, register_backbone
    >>> @register_backbone("my_net")
    ... class MyNet(Backbone): ...
    """

    def decorator(cls: type[Backbone]) -> type[Backbone]:
        if not (isinstance(cls, type) and issubclass(cls, Backbone)):
            raise TypeError(f"register_backbone({name!r}) expects a subclass of Backbone, got {cls!r}.")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"A backbone named {name!r} is already registered ({_REGISTRY[name].__name__}).")
        _REGISTRY[name] = cls
        return cls

    return decorator


def get_backbone(name: str | type[Backbone]) -> type[Backbone]:
    """Look up a backbone class by name (a class is returned unchanged)."""
    if isinstance(name, type) and issubclass(name, Backbone):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown backbone {name!r}. Available: {', '.join(sorted(_REGISTRY))}; "
            "or register your own with cellflow.backbones.register_backbone."
        ) from None


def registered_name(backbone: type[Backbone]) -> str:
    """The name a backbone class was registered under."""
    for name, cls in _REGISTRY.items():
        if cls is backbone:
            return name
    raise ValueError(f"{backbone!r} is not registered; decorate it with @register_backbone('name') first.")


def available_backbones() -> list[str]:
    """Names of the registered backbones."""
    return sorted(_REGISTRY)
