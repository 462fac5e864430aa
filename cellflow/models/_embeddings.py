"""Token features for embeddings that can speak about perturbations never seen in training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


def table_features(table: pd.DataFrame, *, required: list[str]) -> tuple[list[str], np.ndarray]:
    """Tokens and features from a user table (rows: perturbation names; columns: features).

    Raises a clear error when a token of the training data is missing from the table or
    the table holds non-numeric or non-finite values.
    """
    if not table.index.is_unique:
        raise ValueError("The token_embedding table has duplicated perturbation names in its index.")
    index = table.index.astype(str)
    missing = sorted(set(required) - set(index))
    if missing:
        raise ValueError(
            f"The token_embedding table has no row for {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
            "it must cover every perturbation token of the training data."
        )
    try:
        values = table.to_numpy(dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError("The token_embedding table must hold numbers only (one row of features per token).") from None
    if not np.isfinite(values).all():
        raise ValueError("The token_embedding table holds NaN or infinite values.")
    return list(index), values


def expression_features(adata, setup, conditions, *, required: list[str]) -> tuple[list[str], np.ndarray]:
    """Every measured gene's co-expression profile across control cells.

    Token ``g`` (a measured gene) gets the Pearson correlations of gene ``g`` with all genes
    in control cells, on log-normalised expression. Genes that move together in the
    unperturbed state tend to act in the same pathways, so perturbing them tends to have
    related effects; this gives every measured gene an embedding, seen in training or not.
    """
    genes = list(map(str, adata.var_names))
    missing = sorted(set(required) - set(genes))
    if missing:
        raise ValueError(
            f"token_embedding='expression' needs perturbed genes among the measured genes, but {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} are not in adata.var_names. Use token_embedding='learned' "
            "or a DataFrame of token features."
        )
    matrix = adata.layers[setup.layer] if setup.layer else adata.X
    controls = np.flatnonzero([c.is_control for c in conditions])
    # Sums and cross-products over blocks of control cells: memory holds one block and genes x genes.
    total, cross = np.zeros(len(genes)), np.zeros((len(genes), len(genes)))
    for start in range(0, len(controls), 4096):
        x = matrix[controls[start : start + 4096]]
        x = (x.toarray() if sp.issparse(x) else np.asarray(x)).astype(np.float64)
        if setup.counts:
            x = np.log1p(x / np.maximum(x.sum(axis=1, keepdims=True), 1.0) * 1e4)
        total += x.sum(axis=0)
        cross += x.T @ x
    mean = total / max(len(controls), 1)
    covariance = cross - len(controls) * np.outer(mean, mean)  # sum over cells of centred products
    variance = np.diag(covariance)
    norm = np.sqrt(np.maximum(variance, 0.0))
    # Constant genes correlate with nothing (their variance is rounding error of the sums).
    norm[variance <= 1e-9 * np.diag(cross)] = np.inf
    norm[norm == 0] = np.inf
    return genes, (covariance / np.outer(norm, norm)).astype(np.float32)
