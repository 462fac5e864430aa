"""scGen-style latent arithmetic in a trained CellFlow's VAE latent space."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..flow import TokenShifts
from ..metrics import log_normalize
from ..pp._conditions import parse_condition
from ..pp._setup import setup_conditions
from ..train import gene_offsets_from_cells
from ._baselines import Baseline


class LatentArithmeticBaseline(Baseline):
    """Control latents shifted by the dose-weighted sum of the tokens' mean latent shifts, decoded by the model's VAE.

    The shifts are :class:`~cellflow.flow.TokenShifts` (``mode="additive"``), the latent
    arithmetic the flow itself runs relative to, estimated on the latents (the VAE's posterior
    means) of the cells this baseline is fitted on. A condition ``A+B`` is predicted as control
    latents of the context + ``shift_A + shift_B``, decoded as cellflow decodes its own cells
    (with the control cells' log library sizes plus the tokens' summed library shifts and, for a
    model with gene offsets, the control cells' offsets plus the tokens' summed changes of them
    (:class:`~cellflow.flow.GeneOffsets`, estimated on the same cells), counts drawn around a
    posterior draw of each latent; as scGen, Lotfollahi et al. 2019, with the VAE
    of the model instead of a separately trained one). For an unseen combination it is the model
    with a zero velocity field; a condition measured in training is shifted by the sum of its
    tokens' shifts here, where the model (``source_shift="measured"``) uses its own.
    A token not measured alone in the context uses its shift from the contexts where it was
    (covariate transfer), or one derived from the combinations it was measured in; a token with
    neither contributes nothing and is listed in ``missing_singles``.

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
        self.latent, self.latent_scale, self.log_library = self.model.vae.encode_posterior(matrix, self.batch)
        conditions = setup_conditions(adata, self.setup)
        context_codes, context_names = pd.factorize(self.contexts)
        self.context_code = {name: code for code, name in enumerate(context_names)}
        self.tokens = sorted({t for c in conditions for t in c.tokens})
        self.shifts, self.library_shifts = (
            TokenShifts.from_cells(values, conditions, context_codes, len(context_names), self.tokens, mode="additive")
            for values in (self.latent, self.log_library[:, None])
        )
        self.gene_offsets = None
        if self.model.module.gene_offsets is not None:  # as the model decodes, estimated on these cells
            self.gene_offsets = gene_offsets_from_cells(
                self.model.vae,
                matrix,
                (self.latent, self.latent_scale, self.log_library),
                self.batch,
                conditions,
                context_codes,
                len(context_names),
                self.tokens,
                mode="additive",
                combinations=self.model.config.combination_offsets,
            )
        self.missing_singles: dict[str, list[str]] = {}
        return self

    def predict(self, condition, *, covariates=None, n_cells=500, seed=0):  # noqa: D102
        context = self._context(covariates)
        controls = self._control_cells(context)
        pick = np.random.default_rng(seed).choice(controls, n_cells)
        parsed = parse_condition(condition, control=self.setup.control, sep=self.setup.combo_sep)
        known = [
            t in self.tokens and bool(self.shifts.table[:, self.tokens.index(t)].abs().sum()) for t in parsed.tokens
        ]
        missing = [t for t, k in zip(parsed.tokens, known) if not k]
        if missing:
            self.missing_singles.setdefault(condition, []).extend(missing)
        ids = torch.tensor([[self.tokens.index(t) if k else 0 for t, k in zip(parsed.tokens, known)] or [0]])
        doses = torch.tensor([[d if k else 0.0 for d, k in zip(parsed.doses, known)] or [0.0]], dtype=torch.float32)
        query = (ids, doses, doses != 0, torch.tensor([self.context_code[context]]))
        shift, library_shift = (shifts(*query)[0].numpy() for shifts in (self.shifts, self.library_shifts))
        batch = None if self.batch is None else torch.as_tensor(self.batch[pick])[:, None]
        generator = torch.Generator().manual_seed(seed)
        counts = self.model.vae.decode(
            torch.as_tensor(self.latent[pick] + shift, dtype=torch.float32),
            torch.as_tensor(self.log_library[pick] + library_shift, dtype=torch.float32)[:, None],
            batch,
            generator=generator,
            latent_scale=torch.as_tensor(self.latent_scale[pick]),
            gene_offset=None if self.gene_offsets is None else self.gene_offsets(*query),
        )
        return log_normalize(counts.cpu().numpy())
