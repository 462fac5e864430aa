"""Conditions and covariates as the integer tensors the networks read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ._conditions import Condition


@dataclass
class ConditionCodec:
    """Vocabulary of perturbation tokens and covariate categories.

    Parameters
    ----------
    tokens
        Every token the model can embed, in embedding-table order.
    covariate_categories
        For each covariate key, its categories in code order.
    embedding_hint
        Appended to the error for an unknown token: how to make it embeddable.
    """

    tokens: list[str]
    covariate_categories: dict[str, list[str]] = field(default_factory=dict)
    embedding_hint: str = ""

    def __post_init__(self) -> None:
        self._token_id = {t: i for i, t in enumerate(self.tokens)}
        self._category_code = {k: {c: i for i, c in enumerate(v)} for k, v in self.covariate_categories.items()}

    @property
    def covariate_keys(self) -> list[str]:
        """The covariate keys, in the column order of :meth:`encode_covariates`."""
        return list(self.covariate_categories)

    def check_tokens(self, conditions: Sequence[Condition]) -> None:
        """Raise a clear error naming every token the model cannot embed."""
        unknown = sorted({t for c in conditions for t in c.tokens if t not in self._token_id})
        if unknown:
            shown = ", ".join(map(repr, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise ValueError(f"The model cannot embed perturbation token(s) {shown}. {self.embedding_hint}".strip())

    def encode_conditions(self, conditions: Sequence[Condition]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, doses and mask, each ``(n, K)`` with K the largest set (at least 1)."""
        self.check_tokens(conditions)
        k = max([len(c.tokens) for c in conditions] + [1])
        ids = np.zeros((len(conditions), k), dtype=np.int64)
        doses = np.zeros((len(conditions), k), dtype=np.float32)
        mask = np.zeros((len(conditions), k), dtype=bool)
        for row, cond in enumerate(conditions):
            n = len(cond.tokens)
            ids[row, :n] = [self._token_id[t] for t in cond.tokens]
            doses[row, :n] = cond.doses
            mask[row, :n] = True
        return torch.from_numpy(ids), torch.from_numpy(doses), torch.from_numpy(mask)

    def encode_covariates(self, rows: Sequence[Mapping[str, str]]) -> torch.Tensor:
        """``(n, n_covariates)`` category codes; a clear error for an unknown value."""
        codes = np.zeros((len(rows), len(self.covariate_categories)), dtype=np.int64)
        for j, key in enumerate(self.covariate_categories):
            lookup = self._category_code[key]
            for i, row in enumerate(rows):
                if key not in row:
                    raise ValueError(
                        f"covariates must give {key!r} (one of {self.covariate_categories[key][:10]}); "
                        f"the model was trained with covariates {self.covariate_keys}."
                    )
                value = str(row[key])
                if value not in lookup:
                    raise ValueError(
                        f"{key}={value!r} was not seen in training; "
                        f"known values: {self.covariate_categories[key][:20]}."
                    )
                codes[i, j] = lookup[value]
        return torch.from_numpy(codes)
