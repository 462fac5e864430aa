"""A token measured nowhere takes the shifts its features predict (ridge regression on the measured tokens').

A screen in which each of twelve knockdowns changes log expression by ``features @ loadings``
(two features per token, so its effect is linear in its feature row) is learnt with the feature
table as token embedding, one token held out. The held-out token's latent shift is predicted
from the eleven measured ones and compared with its real cells, encoded by the same VAE.
"""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import cellflow as cf
from cellflow.pp._conditions import parse_condition

N_TOKENS, N_GENES, HELD_OUT = 12, 30, "P3"


def _linear_screen(seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(N_TOKENS, 2))
    loadings = rng.normal(scale=0.6, size=(2, N_GENES))
    base = rng.gamma(2.0, 1.0, size=N_GENES)
    labels = ["control"] * 300 + [f"P{i}" for i in range(N_TOKENS) for _ in range(120)]
    change = {"control": np.zeros(N_GENES)} | {f"P{i}": features[i] @ loadings for i in range(N_TOKENS)}
    profile = np.stack([base * np.exp(change[label]) for label in labels])
    library = rng.lognormal(np.log(2000.0), 0.3, size=len(labels))
    means = profile / profile.sum(axis=1, keepdims=True) * library[:, None]
    counts = rng.poisson(rng.gamma(5.0, means / 5.0)).astype(np.float32)  # negative binomial, shape 5
    obs = pd.DataFrame({"perturbation": labels}, index=[f"cell{i}" for i in range(len(labels))])
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"G{g}" for g in range(N_GENES)]))
    return adata, pd.DataFrame(features, index=[f"P{i}" for i in range(N_TOKENS)])


@pytest.fixture(scope="module")
def unseen():
    adata, table = _linear_screen()
    train = adata[adata.obs["perturbation"] != HELD_OUT].copy()
    cf.pp.setup(train, perturbation_key="perturbation", control="control")
    model = cf.CellFlow(train, token_embedding=table, latent_dim=4, backbone_kwargs={"hidden_dim": 64, "n_blocks": 1})
    model.train(vae_epochs=15, flow_steps=150, progress_bar=False, accelerator="cpu")
    latent = cf.tl.encode(model, adata, copy=True).obsm["X_cellflow"]
    labels = adata.obs["perturbation"].to_numpy()
    real_shift = {t: latent[labels == t].mean(axis=0) - latent[labels == "control"].mean(axis=0) for t in table.index}
    return model, real_shift


def _shift(model, label: str) -> np.ndarray:
    ids, doses, mask = model.codec.encode_conditions([parse_condition(label, control="control", sep="+")])
    return model.module.shifts(ids, doses, mask, torch.zeros(1, dtype=torch.long))[0].numpy()


def test_the_unseen_tokens_shift_is_predicted_from_its_features(unseen):
    model, real = unseen
    predicted, truth = _shift(model, HELD_OUT), real[HELD_OUT]
    mean_of_measured = np.mean([real[t] for t in real if t != HELD_OUT], axis=0)
    error = np.linalg.norm(predicted - truth)
    assert error < 0.7 * np.linalg.norm(mean_of_measured - truth)  # better than the training mean
    assert error < 0.7 * np.linalg.norm(truth)  # and than no shift (the control baseline)


def test_generated_cells_of_the_unseen_token_carry_the_predicted_shift(unseen):
    model, real = unseen
    cells = cf.tl.generate(model, conditions=[HELD_OUT, "control"], n_cells=1000, seed=0)
    latent, labels = cells.obsm["X_cellflow"], cells.obs["perturbation"].astype(str).to_numpy()
    generated = latent[labels == HELD_OUT].mean(axis=0) - latent[labels == "control"].mean(axis=0)
    assert np.linalg.norm(generated - real[HELD_OUT]) < 0.7 * np.linalg.norm(real[HELD_OUT])
