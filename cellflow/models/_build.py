"""Build a model's parts from its configuration: checks, token vocabulary, the flow module."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..backbones import get_backbone
from ..backbones._registry import registered_name
from ..flow import FlowModule
from ..nn import ConditionEncoder, TokenEmbedding
from ..pp._setup import SetupConfig
from ._config import CellFlowConfig
from ._embeddings import expression_features, table_features

__all__ = [
    "backbone_name",
    "check_trainable",
    "dose_range",
    "build_flow_module",
    "check_model_inputs",
    "embedding_hint",
    "time_scale",
    "token_vocabulary",
]


def backbone_name(backbone) -> str:
    """The registered name of ``backbone`` (a name or a registered class); fails now on an unknown one."""
    name = backbone if isinstance(backbone, str) else registered_name(backbone)
    get_backbone(name)
    return name


def build_flow_module(
    config: CellFlowConfig, setup: SetupConfig, n_tokens: int, covariate_cardinalities, token_features
):
    """A freshly initialised flow module (seeded by ``config.seed``): condition encoder and backbone."""
    backbone_cls = get_backbone(config.backbone)
    torch.manual_seed(config.seed)
    if token_features is None:
        tokens = TokenEmbedding.learned(max(1, n_tokens), config.cond_dim)
    else:
        tokens = TokenEmbedding.from_features(torch.as_tensor(token_features, dtype=torch.float32), config.cond_dim)
    encoder = ConditionEncoder(
        tokens,
        config.cond_dim,
        covariate_cardinalities=list(covariate_cardinalities),
        # A backbone over time reads the time points as its sequence, not from the condition.
        use_time=setup.time_key is not None and not backbone_cls.over_time,
        pooling=config.pooling,
        time_scale=config.time_scale,
    )
    backbone = backbone_cls(config.latent_dim, config.cond_dim, **config.backbone_kwargs)
    return FlowModule(encoder, backbone, source=config.source, time_scale=config.time_scale)


def check_model_inputs(adata, setup: SetupConfig, config: CellFlowConfig) -> None:
    """Refuse a likelihood that does not fit the registered data, or a missing batch column."""
    if config.likelihood in ("nb", "zinb", "poisson") and not setup.counts:
        raise ValueError(
            f"likelihood={config.likelihood!r} models raw counts, but cf.pp.setup was called with counts=False. "
            "Use likelihood='normal' for log-normalised data, or set up the raw counts."
        )
    if config.batch_key is not None and config.batch_key not in adata.obs.columns:
        raise KeyError(f"batch_key={config.batch_key!r} is not a column of adata.obs.")


def check_trainable(adata, setup: SetupConfig, config: CellFlowConfig, conditions) -> None:
    """Refuse, before any training, data the model could only fail on after minutes of VAE training."""
    is_control = np.fromiter((c.is_control for c in conditions), dtype=bool, count=len(conditions))
    if is_control.all():
        raise ValueError(
            f"adata holds only control cells ({setup.control!r}); the flow learns perturbations from perturbed "
            "cells. Register data with perturbed cells too."
        )
    if config.source != "control" or not setup.covariate_keys:
        return
    contexts = adata.obs[list(setup.covariate_keys)].astype(str).agg(" | ".join, axis=1).to_numpy()
    missing = sorted(set(contexts[~is_control]) - set(contexts[is_control]))
    if missing:
        raise ValueError(
            f"No control cells in context(s) {missing[:10]} of {list(setup.covariate_keys)}; the flow starts "
            "from the control cells of a perturbed cell's context. Drop those cells, or use source='noise'."
        )


def dose_range(conditions) -> tuple[float, float]:
    """The smallest and largest dose of any perturbation in the training data (1 and 1 without doses)."""
    doses = [d for c in conditions for d in c.doses if d != 0]
    return (float(min(doses)), float(max(doses))) if doses else (1.0, 1.0)


def token_vocabulary(adata, setup, config: CellFlowConfig, table: pd.DataFrame | None, conditions):
    """Tokens the model can embed and, for feature-based embeddings, their feature table."""
    seen = sorted({t for c in conditions for t in c.tokens})
    if config.token_embedding == "learned":
        return seen, None
    if config.token_embedding == "table":
        return table_features(table, required=seen)
    return expression_features(adata, setup, conditions, required=seen)


def time_scale(adata, setup: SetupConfig) -> float:
    """Scale of experimental time for its sinusoidal features: the latest time point maps to 1 (times 1000)."""
    if setup.time_key is None:
        return 1000.0
    latest = float(np.abs(adata.obs[setup.time_key].astype(float)).max())
    return 1000.0 / latest if latest > 0 else 1000.0


def embedding_hint(kind: str) -> str:
    """What to do about tokens the embedding cannot embed."""
    return {
        "learned": "token_embedding='learned' only knows tokens seen in training; use token_embedding='expression' "
        "(for measured genes) or a DataFrame of token features that includes them.",
        "expression": "token_embedding='expression' embeds measured genes only (adata.var_names); "
        "pass a DataFrame of token features for other perturbations.",
        "table": "Add them to the token_embedding table (a DataFrame indexed by perturbation name).",
    }[kind]
