"""The linear baseline of Ahlmann-Eltze, Huber and Anders (2025).

"Deep-learning-based gene perturbation effect prediction does not yet outperform simple
linear baselines" (Nature Methods 2025) predicts the pseudobulk expression change of a
perturbation as ``Y ≈ G W Pᵀ + b``: gene embeddings ``G`` (genes x K), perturbation
embeddings ``P`` (perturbations x K), a K x K matrix ``W`` fitted by ridge regression,
and the mean change ``b``.

What is implemented here (and where it departs from the paper):

* ``Y`` is genes x training conditions: the mean log-normalised expression of each
  training condition (single or combination) in its context minus the mean of the
  context's control cells. The paper fits pseudobulk expression of single perturbations;
  here combinations are training columns too, and ``b`` is their mean change.
* ``G`` = the top-K left singular vectors of the centred ``Y`` (the gene loadings of a
  PCA of the training matrix), K = ``n_comps`` (paper: 10), capped by the number of
  training conditions.
* ``P`` for a token that is a measured gene (in ``var_names``): that gene's row of ``G``
  (the paper's variant with the perturbation embedding from the same gene embedding).
  For other tokens ("learned"), embeddings are fitted by ridge regression so that the sum
  of the tokens' embeddings of each training condition matches its coordinates
  ``(Y - b)ᵀ G``; the paper instead takes ``P`` from a PCA of ``Yᵀ``, which gives no
  embedding for a token seen only inside combinations. A token never seen in training and
  not measured has a zero embedding: its predicted change is ``b``.
* A condition's embedding is the sum of its tokens' embeddings (the paper predicts
  combinations with a separate additive model).
* ``W = (GᵀG + λI)⁻¹ Gᵀ (Y - b) P (PᵀP + λI)⁻¹`` with λ = ``ridge`` (paper: 0.1).
* Contexts (cell lines) share ``G``, ``W`` and ``P``; ``b`` is the mean change of the
  context's training conditions when it has any, else of all of them. Predicted cells
  are the context's control cells plus the predicted change, clipped at 0.
"""

from __future__ import annotations

import numpy as np

from ._baselines import Baseline


class LinearBaseline(Baseline):
    """``Y ≈ G W Pᵀ + b`` fitted by ridge regression on training mean changes (see the module docstring).

    Parameters
    ----------
    n_comps
        Dimension K of the gene and perturbation embeddings.
    ridge
        Ridge penalty λ.
    """

    name = "linear"

    def __init__(self, n_comps: int = 10, ridge: float = 0.1) -> None:
        if n_comps < 1:
            raise ValueError(f"n_comps={n_comps!r} must be at least 1.")
        if ridge < 0:
            raise ValueError(f"ridge={ridge!r} must be non-negative.")
        self.n_comps, self.ridge = int(n_comps), float(ridge)

    def fit(self, adata) -> LinearBaseline:  # noqa: D102
        super().fit(adata)
        genes = {str(g): i for i, g in enumerate(adata.var_names)}
        columns, column_context = [], []
        for context in np.unique(self.contexts):
            controls = self._cells(self.setup.control, context)
            if not len(controls):
                continue  # no reference state: its conditions' changes are unknown
            control_mean = self.expression[controls].mean(axis=0)
            for label in np.unique(self.labels[self.contexts == context]):
                if label == self.setup.control:
                    continue
                delta = self.expression[self._cells(label, context)].mean(axis=0) - control_mean
                columns.append((label, delta))
                column_context.append(context)
        if not columns:
            raise ValueError("LinearBaseline needs perturbed training cells in a context with control cells.")
        labels = [label for label, _ in columns]
        y = np.stack([delta for _, delta in columns], axis=1)  # genes x conditions
        self.offset = y.mean(axis=1)
        self.context_offset = {c: y[:, np.array(column_context) == c].mean(axis=1) for c in sorted(set(column_context))}
        centred = y - self.offset[:, None]
        k = max(1, min(self.n_comps, y.shape[1] - 1 if y.shape[1] > 1 else 1, y.shape[0]))
        u, _, _ = np.linalg.svd(centred, full_matrices=False)
        self.gene_embedding = u[:, :k]
        tokens = sorted({t for label in labels for t in self._tokens(label)})
        membership = np.array([[t in self._tokens(label) for t in tokens] for label in labels], dtype=float)
        measured = np.array([t in genes for t in tokens])
        embedding = np.zeros((len(tokens), k))
        embedding[measured] = self.gene_embedding[[genes[t] for t in np.array(tokens)[measured]]]
        if (~measured).any():
            target = centred.T @ self.gene_embedding - membership[:, measured] @ embedding[measured]
            a = membership[:, ~measured]
            embedding[~measured] = np.linalg.solve(a.T @ a + self.ridge * np.eye(a.shape[1]), a.T @ target)
        self.token_embedding = dict(zip(tokens, embedding))
        self.measured_genes = genes
        p = membership @ embedding  # conditions x K
        g = self.gene_embedding
        left = np.linalg.solve(g.T @ g + self.ridge * np.eye(k), g.T @ centred)
        self.weights = left @ p @ np.linalg.inv(p.T @ p + self.ridge * np.eye(k))
        return self

    def predicted_change(self, condition: str, context: str = "") -> np.ndarray:
        """Predicted mean log-expression change of ``condition`` from the context's control."""
        embedding = np.zeros(self.gene_embedding.shape[1])
        for token in self._tokens(condition):
            if token in self.token_embedding:
                embedding += self.token_embedding[token]
            elif token in self.measured_genes:
                embedding += self.gene_embedding[self.measured_genes[token]]
        offset = self.context_offset.get(context, self.offset)
        return self.gene_embedding @ self.weights @ embedding + offset

    def predict(self, condition, *, covariates=None, n_cells=500, seed=0):  # noqa: D102
        context = self._context(covariates)
        controls = self._control_cells(context)
        cells = self.expression[np.random.default_rng(seed).choice(controls, n_cells)]
        return np.clip(cells + self.predicted_change(condition, context), 0.0, None)
