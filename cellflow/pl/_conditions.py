"""``cf.pl.conditions``: the model's perturbation token embeddings on their first two principal components."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._render import check_flags, finish, new_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes

SEEN_COLOR = "#1f77b4"
UNSEEN_COLOR = "#d62728"


def conditions(
    model,
    *,
    labels: bool | Sequence[str] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | None:
    """The learnt embedding of every perturbation token, on its first two principal components.

    Each token (``"A"`` of ``"A+B"``) is embedded as the condition encoder sees it, before
    tokens are pooled into a set (:class:`~cellflow.nn.SetEncoder`: the token embedding and
    its projection to the condition's size). Tokens close together are perturbations the
    model treats alike, which is what lets it predict a combination from its parts. With a
    feature-based embedding (``token_embedding="expression"`` or a table), tokens never seen
    in training are drawn in red: their place comes from their features alone.

    Parameters
    ----------
    model
        A trained :class:`~cellflow.CellFlow` with at least two tokens.
    labels
        Name the tokens seen in training (``None``; a feature-based embedding can hold every
        measured gene, too many to name), every token (``True``), none (``False``), or only
        these tokens (a list).
    ax
        Axes to draw on; default a new figure.
    show
        Show the figure (``None``: ``scanpy.settings.autoshow``); a shown figure returns nothing.
    save
        Write the figure: a file path (its extension sets the format; ``.png`` when it has
        none), or ``True`` for ``scanpy.settings.figdir / "conditions.<format>"``.

    Returns
    -------
    The Axes, unless the figure was shown: scatter collections ``"seen in training"`` (and
    ``"not seen in training"``), one text per named token.

    Raises
    ------
    TypeError
        ``model`` is not a :class:`~cellflow.CellFlow`.
    ValueError
        An untrained model, fewer than two tokens, or ``labels`` naming unknown tokens.

    Examples
    --------
    >>> cf.pl.conditions(model, labels=["KLF1", "MAP2K6"])  # doctest: +SKIP
    """
    from ..models._cellflow import CellFlow

    check_flags(show, save)
    if not isinstance(model, CellFlow):
        raise TypeError(f"model must be a trained cf.CellFlow, got {type(model).__name__}.")
    if not model.is_trained:
        raise ValueError("The model is not trained: its token embeddings are still random. Call model.train() first.")
    tokens = list(model.codec.tokens)
    if len(tokens) < 2:
        raise ValueError(f"The model has {len(tokens)} perturbation token(s); a 2-D embedding needs at least 2.")
    seen = set(model.setup.tokens) or set(tokens)
    is_seen = np.array([t in seen for t in tokens])
    named = seen if labels is None else _named(labels, tokens)
    vectors = token_vectors(model)
    coordinates, explained = _pca(vectors)

    ax, own = new_axes(ax, (4.6, 4.0))
    for mask, color, name in (
        (is_seen, SEEN_COLOR, "seen in training"),
        (~is_seen, UNSEEN_COLOR, "not seen in training"),
    ):
        if mask.any():
            ax.scatter(coordinates[mask, 0], coordinates[mask, 1], s=30, c=color, label=name, zorder=3)
    for i, token in enumerate(tokens):
        if token in named:
            ax.annotate(token, coordinates[i], xytext=(3, 3), textcoords="offset points", fontsize=7)
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f}%)")
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.0f}%)")
    ax.set_title(f"perturbation embeddings ({len(tokens)} tokens)", fontsize=10)
    if not is_seen.all():
        ax.legend(frameon=False, fontsize=8)
    return finish(ax.figure, ax, name="conditions", show=show, save=save, own=own)


def token_vectors(model) -> np.ndarray:
    """``(tokens, C)`` embedding of every token, in ``model.codec.tokens`` order, as the set encoder uses it."""
    import torch

    encoder = model.module.encoder.set_encoder
    ids = torch.arange(len(model.codec.tokens))[:, None]  # (V, 1): each token a set of one
    with torch.no_grad():
        return encoder.project(encoder.token_embedding(ids))[:, 0].double().cpu().numpy()


def _named(labels, tokens: list[str]) -> set[str]:
    if isinstance(labels, bool):
        return set(tokens) if labels else set()
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"labels must be True, False or a list of tokens, got {labels!r}.")
    unknown = [t for t in labels if t not in set(tokens)]
    if unknown:
        raise ValueError(f"labels names tokens the model does not have: {unknown[:5]}; its tokens: {tokens[:10]}.")
    return set(labels)


def _pca(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates on the first two principal components and their share of the variance (0 when absent)."""
    centred = vectors - vectors.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coordinates = np.zeros((len(vectors), 2))
    k = min(2, len(s))
    coordinates[:, :k] = u[:, :k] * s[:k]
    variance = s**2
    explained = np.zeros(2)
    if variance.sum() > 0:
        explained[:k] = variance[:k] / variance.sum()
    return coordinates, explained
