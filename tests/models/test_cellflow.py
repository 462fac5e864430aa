import numpy as np
import pandas as pd
import pytest
import torch

import cellflow as cf
from cellflow.evaluation import ControlBaseline
from cellflow.metrics import log_normalize


def test_vae_round_trip_beats_the_gene_mean(trained, screen):
    """Decoding a cell's own latent reconstructs it better than the average cell does."""
    _, _, _, train = screen
    x = train.X[:400]
    z = trained.vae.encode(x)
    log_library = torch.log(torch.as_tensor(np.asarray(x.sum(axis=1)), dtype=torch.float32))
    mean = trained.vae.decode(torch.as_tensor(z), log_library, sample=False).numpy()
    observed = log_normalize(x)
    reconstructed = log_normalize(mean)
    error_vae = np.mean((reconstructed - observed) ** 2)
    error_mean = np.mean((observed.mean(axis=0) - observed) ** 2)
    assert error_vae < 0.8 * error_mean


def test_latent_separates_conditions(trained, screen):
    """Cells of one condition sit closer to each other than to control cells, in the latent."""
    _, _, _, train = screen
    encoded = cf.tl.encode(trained, train, copy=True)
    assert "X_cellflow" not in train.obsm  # copy=True leaves the input alone
    latent = encoded.obsm["X_cellflow"]
    assert latent.shape == (train.n_obs, 16)
    labels = train.obs["perturbation"].astype(str).to_numpy()
    perturbed = next(c for c in pd.unique(labels) if c != "control" and "+" in c)
    a, b = latent[labels == perturbed], latent[labels == "control"]
    within = np.linalg.norm(a - a.mean(0), axis=1).mean()
    between = np.linalg.norm(a.mean(0) - b.mean(0))
    assert between > 0.3 * within


def test_held_out_combinations_closer_to_truth_than_control(trained, screen):
    """The main job: predicted combinations never seen in training beat the no-change baseline."""
    adata, _, split, train = screen
    truth = cf.datasets.true_means(adata)
    truth = truth.droplevel([n for n in truth.index.names if n not in ("perturbation", "cell_type")])
    control = ControlBaseline().fit(train)

    def error(pred_log, condition, cell_type):
        predicted = np.expm1(pred_log).mean(axis=0) / 1e4
        true = truth.loc[(condition, cell_type)].to_numpy()
        return np.sqrt(np.mean((np.log1p(1e4 * predicted) - np.log1p(1e4 * true)) ** 2))

    ours, baseline = [], []
    for condition in split.held_out:
        for cell_type in ("type_0", "type_1"):
            pred = cf.tl.generate(trained, conditions=[condition], n_cells=300, covariates={"cell_type": cell_type})
            ours.append(error(log_normalize(pred.X), condition, cell_type))
            ctrl = control.predict(condition, covariates={"cell_type": cell_type}, n_cells=300)
            baseline.append(error(ctrl, condition, cell_type))
    assert np.mean(ours) < 0.8 * np.mean(baseline), (ours, baseline)


def test_save_load_generates_identical_cells(trained, tmp_path):
    trained.save(tmp_path / "model")
    loaded = cf.CellFlow.load(tmp_path / "model")
    kwargs = {"conditions": ["control", trained.codec.tokens[0]], "n_cells": 50, "covariates": {"cell_type": "type_1"}}
    a, b = cf.tl.generate(trained, seed=4, **kwargs), cf.tl.generate(loaded, seed=4, **kwargs)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["X_cellflow"], b.obsm["X_cellflow"])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(tmp_path / "model")


def test_checkpoint_is_safetensors_and_json(trained, tmp_path):
    import json

    from safetensors.torch import load_file

    trained.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    weights = meta["weights"]["file"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", weights]
    assert meta["format"] == "cellflow" and meta["model"]["backbone"] == "mlp"
    assert any(k.startswith("vae.") for k in load_file(str(tmp_path / "m" / weights)))


def test_model_does_not_mutate_user_data(screen):
    _, _, _, train = screen
    adata = train[:600].copy()
    cf.pp.setup(adata, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])
    x, obs, uns = adata.X.copy(), adata.obs.copy(), set(adata.uns)
    model = cf.CellFlow(adata, latent_dim=4, backbone_kwargs={"hidden_dim": 16, "n_blocks": 1})
    model.train(vae_epochs=2, flow_steps=2, progress_bar=False, accelerator="cpu")
    assert (adata.X != x).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert set(adata.uns) == uns and not adata.obsm


def test_untrained_model_and_bad_options(screen):
    _, _, _, train = screen
    model = cf.CellFlow(train, latent_dim=4)
    with pytest.raises(RuntimeError, match="not trained yet"):
        cf.tl.generate(model, conditions=["control"], covariates={"cell_type": "type_0"})
    with pytest.raises(RuntimeError, match="Train the VAE first"):
        model.train_flow(steps=1)
    # Flow options are checked before the VAE trains, so a typo costs no training time.
    for bad, message in [
        ({"flow_kwargs": {"coupling": "sinkhorn"}}, "coupling="),
        ({"flow_steps": 0}, "flow steps=0"),
        ({"reflow_rounds": -1}, "reflow rounds=-1"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.train(**bad)
        assert model.vae is None
    # A misspelt option is named, with the ones that exist.
    with pytest.raises(TypeError, match=r"flow_kwargs got unknown option\(s\) \['cells_per_grup'\].*'cells_per_group'"):
        model.train(flow_kwargs={"cells_per_grup": 8})
    assert model.vae is None
    with pytest.raises(ValueError, match="Unknown backbone 'transformer'"):
        cf.CellFlow(train, backbone="transformer")
    with pytest.raises(ValueError, match="source="):
        cf.CellFlow(train, source="gaussian")
    with pytest.raises(ValueError, match="vae_kl_weight=0"):
        cf.CellFlow(train, vae_kl_weight=0)
    with pytest.raises(ValueError, match="counts=False"):
        cf.pp.setup(train, perturbation_key="perturbation", control="control", counts=False)
        cf.CellFlow(train, likelihood="nb")
    cf.pp.setup(train, perturbation_key="perturbation", control="control", covariate_keys=["cell_type"])


def test_setup_is_required(screen):
    _, _, _, train = screen
    bare = train.copy()
    del bare.uns["cellflow"]
    with pytest.raises(KeyError, match="Run cf.pp.setup"):
        cf.CellFlow(bare)


def test_expression_embedding_covers_every_measured_gene(screen):
    _, _, _, train = screen
    model = cf.CellFlow(train, token_embedding="expression", latent_dim=4)
    assert model.codec.tokens == list(train.var_names)


def test_table_embedding_must_cover_training_tokens(screen):
    _, _, _, train = screen
    tokens = list(cf.pp.get_setup(train).tokens)
    table = pd.DataFrame(np.random.default_rng(0).normal(size=(len(tokens) + 1, 5)), index=tokens + ["NEW"])
    model = cf.CellFlow(train, token_embedding=table, latent_dim=4)
    assert "NEW" in model.codec.tokens
    with pytest.raises(ValueError, match="has no row for"):
        cf.CellFlow(train, token_embedding=table.iloc[1:], latent_dim=4)


def test_a_users_backbone_plugs_in_by_name(screen, tmp_path):
    from torch import nn

    from cellflow.backbones import Backbone, available_backbones, register_backbone

    @register_backbone("test_linear")
    class LinearVelocity(Backbone):
        def __init__(self, dim, cond_dim, *, scale=1.0):
            super().__init__(dim, cond_dim)
            self.net = nn.Linear(dim + cond_dim + 1, dim)
            self.scale = scale

        def forward(self, z, s, cond):
            s = torch.as_tensor(s, dtype=z.dtype).expand(z.shape[0])
            return self.scale * self.net(torch.cat([z, cond.vector, s[:, None]], dim=1))

    assert "test_linear" in available_backbones()
    _, _, _, train = screen
    model = cf.CellFlow(train[:500].copy(), backbone="test_linear", backbone_kwargs={"scale": 0.5}, latent_dim=4)
    model.train(vae_epochs=2, flow_steps=5, progress_bar=False, accelerator="cpu")
    model.save(tmp_path / "m")
    loaded = cf.CellFlow.load(tmp_path / "m")
    assert isinstance(loaded.module.backbone, LinearVelocity) and loaded.module.backbone.scale == 0.5
    kwargs = {"conditions": ["control"], "n_cells": 5, "covariates": {"cell_type": "type_0"}}
    np.testing.assert_array_equal(
        cf.tl.generate(model, **kwargs).obsm["X_cellflow"], cf.tl.generate(loaded, **kwargs).obsm["X_cellflow"]
    )


def test_training_is_repeatable_with_a_seed(screen):
    _, _, _, train = screen
    small = train[:500].copy()
    kwargs = {"conditions": ["control"], "n_cells": 20, "covariates": {"cell_type": "type_0"}, "seed": 0}
    latents = []
    for _ in range(2):
        model = cf.CellFlow(small, latent_dim=4, backbone_kwargs={"hidden_dim": 16, "n_blocks": 1}, seed=5)
        model.train(vae_epochs=3, flow_steps=5, progress_bar=False, accelerator="cpu")
        latents.append(cf.tl.generate(model, **kwargs).obsm["X_cellflow"])
    np.testing.assert_array_equal(latents[0], latents[1])
