"""Perturbation labels as sets of tokens.

A label such as ``"A+B"`` names the set {A, B}: ``"B+A"`` is the same condition, any
number of tokens may be combined, and a dose string such as ``"1+0.5"`` aligns with the
tokens in the order they are written. The control label is its own condition, with no
tokens. Everything downstream works with the canonical form: tokens sorted, doses
reordered with them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Condition:
    """A parsed perturbation: its tokens (sorted) and their doses.

    Attributes
    ----------
    tokens
        Perturbation names, sorted; empty for the control.
    doses
        One dose per token, in the order of ``tokens``.
    """

    tokens: tuple[str, ...]
    doses: tuple[float, ...]

    @property
    def is_control(self) -> bool:
        """Whether this is the control condition (no tokens)."""
        return not self.tokens

    def label(self, control: str, sep: str = "+") -> str:
        """The canonical label: sorted tokens joined by ``sep`` (or the control label)."""
        return control if self.is_control else sep.join(self.tokens)


def parse_condition(label: str, *, control: str, sep: str = "+", dose: str | float | None = None) -> Condition:
    """Parse a perturbation label (and optional dose string) into a :class:`Condition`.

    Parameters
    ----------
    label
        ``"A"``, ``"A+B"``, ... or the control label.
    control
        The label of control cells.
    sep
        Separator between the tokens of a combination.
    dose
        ``None`` (every token at dose 1), a number (every token at that dose), or a string
        with one value per token joined by ``sep`` (``"1+0.5"``). Ignored for the control.

    Returns
    -------
    The condition with its tokens sorted and the doses reordered to match.

    Raises
    ------
    TypeError
        A label that is not a string, or a dose that is a bool.
    ValueError
        Empty labels or tokens, a token repeated within a label, or doses that do not
        match the tokens (wrong count, not a number, negative or not finite).

    Examples
    --------
    >>> parse_condition("B+A", control="ctrl", dose="0.5+1")
    Condition(tokens=('A', 'B'), doses=(1.0, 0.5))
    """
    if not isinstance(label, str):
        raise TypeError(f"A perturbation label must be a string such as 'A' or 'A+B', got {label!r}.")
    if not label.strip():
        raise ValueError(
            f"Empty perturbation label {label!r}: every cell needs a label (use {control!r} for controls)."
        )
    label = label.strip()
    if label == control:
        return Condition((), ())
    tokens = [t.strip() for t in label.split(sep)]
    if any(not t for t in tokens):
        raise ValueError(f"Perturbation label {label!r} has an empty token (separator {sep!r} at an end or doubled).")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"Perturbation label {label!r} repeats a token; write each perturbation once.")
    if control in tokens:
        raise ValueError(
            f"Perturbation label {label!r} combines the control label {control!r} with perturbations; "
            f"relabel it as the perturbation alone."
        )
    doses = _parse_doses(dose, n_tokens=len(tokens), label=label, sep=sep)
    order = sorted(range(len(tokens)), key=tokens.__getitem__)
    return Condition(tuple(tokens[i] for i in order), tuple(doses[i] for i in order))


def _parse_doses(dose: str | float | None, *, n_tokens: int, label: str, sep: str) -> list[float]:
    if dose is None:
        return [1.0] * n_tokens
    if isinstance(dose, bool | np.bool_):
        raise TypeError(f"Dose {dose!r} of perturbation {label!r} is a bool; give a number or a dose string.")
    if isinstance(dose, numbers.Real):  # numpy numbers too: a number is every token's dose
        values = [float(dose)] * n_tokens
    else:
        parts = str(dose).strip().split(sep)
        if len(parts) != n_tokens:
            raise ValueError(
                f"Dose {dose!r} has {len(parts)} value(s) but perturbation {label!r} has {n_tokens} token(s); "
                f"give one dose per token, joined by {sep!r} in the same order."
            )
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"Dose {dose!r} of perturbation {label!r} is not a number (or numbers joined by {sep!r})."
            ) from None
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"Dose {dose!r} of perturbation {label!r} must be finite and non-negative.")
    return values


def canonical_label(label: str, *, control: str, sep: str = "+") -> str:
    """The canonical form of a label: ``"B+A"`` -> ``"A+B"``; the control label is kept."""
    return parse_condition(label, control=control, sep=sep).label(control, sep)
