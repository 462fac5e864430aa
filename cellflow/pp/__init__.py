"""Preprocessing: register an AnnData with cellflow."""

from ..data._setup import setup

__all__ = ["setup"]
