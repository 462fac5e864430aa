"""Plots of predictions, benchmarks and models, in scanpy's conventions (matplotlib, imported lazily)."""

__all__: list[str] = []
