"""scGen-style latent arithmetic in a trained CellFlow's VAE latent space."""

from __future__ import annotations

import numpy as np
import torch

from ..metrics import log_normalize
from ._baselines import Baseline


class LatentArithmeticBaseline(Baseline):
    """Control latents shifted by the sum of the tokens' mean latent shifts, decoded by the model's VAE.

    For a token ``t`` in a context: ``delta_t = mean latent(t) - mean latent(control)``, with
    the latents the VAE's posterior means of the training cells. A condition ``A+B`` is
    predicted as control latents of the context + ``delta_A + delta_B``, decoded with the
    control cells' library sizes and sampled from the likelihood (as scGen, Lotfollahi et
    al. 2019, with the VAE of the model instead of a separately trained one). A token not
    measured as a single in the context uses its mean shift over the contexts where it was
    (covariate transfer); a token never measured alone contributes nothing and is listed in
    ``missing_singles``.

    Parameters
    ----------
    model
        A trained :class:`~cellflow.CellFlow`; only its VAE is used.
    """

    name = "latent_arithmetic"

    def __init__(self, model) -> None:
        if not getattr(model, "is_trained", False):
            raise ValueError("LatentArithmeticBaseline needs a trained CellFlow (call model.train() first).")
        self.model = model

    def fit(self, adata) -> LatentArithmeticBaseline:  # noqa: D102
        super().fit(adata)
        if [str(g) for g in adata.var_names] != list(self.model.genes):
            raise ValueError("adata must have the model's genes in the model's order.")
        matrix = adata.layers[self.setup.layer] if self.setup.layer else adata.X
        self.batch = None
        if self.model.config.batch_key is not None:
            codes = {c: i for i, c in enumerate(self.model.batch_categories)}
            self.batch = np.array([codes[str(b)] for b in adata.obs[self.model.config.batch_key]], dtype=np.int64)
        self.latent = self.model.vae.encode(matrix, self.batch)
        self.log_library = np.log(np.maximum(np.asarray(matrix.sum(axis=1)).ravel(), 1.0))
        self.missing_singles: dict[str, list[str]] = {}
        return self

    def token_shift(self, token: str, context: str) -> np.ndarray | None:
        """Mean latent shift of the single ``token`` in ``context`` (else averaged over contexts), or ``None``."""
        shifts = []
        for ctx in [context] + [c for c in np.unique(self.contexts) if c != context]:
            rows, controls = self._cells(token, ctx), self._cells(self.setup.control, ctx)
            if len(rows) and len(controls):
                shift = self.latent[rows].mean(axis=0) - self.latent[controls].mean(axis=0)
                if ctx == context:
                    return shift
                shifts.append(shift)
        return np.mean(shifts, axis=0) if shifts else None

    def predict(self, condition, *, covariates=None, n_cells=500, seed=0):  # noqa: D102
        context = self._context(covariates)
        controls = self._control_cells(context)
        pick = np.random.default_rng(seed).choice(controls, n_cells)
        z = self.latent[pick].copy()
        for token in self._tokens(condition):
            shift = self.token_shift(token, context)
            if shift is None:
                self.missing_singles.setdefault(condition, []).append(token)
                continue
            z += shift
        batch = None if self.batch is None else torch.as_tensor(self.batch[pick])[:, None]
        generator = torch.Generator().manual_seed(seed)
        counts = self.model.vae.decode(
            torch.as_tensor(z, dtype=torch.float32),
            torch.as_tensor(self.log_library[pick], dtype=torch.float32)[:, None],
            batch,
            generator=generator,
        )
        return log_normalize(counts.cpu().numpy())
