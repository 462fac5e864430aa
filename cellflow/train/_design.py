"""The training design: which cells form which group, in which context."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..data._codec import ConditionCodec
from ..data._conditions import Condition
from ..data._setup import SetupConfig
from ._flow_module import GroupTable


class TrainingDesign:
    """Groups (condition x context x time) of the training cells and their network inputs."""

    def __init__(self, group, context, contexts, is_control, group_context, table) -> None:
        self.group, self.context, self.contexts = group, context, contexts
        self.is_control, self.group_context, self.table = is_control, group_context, table


def build_training_design(
    adata, setup: SetupConfig, codec: ConditionCodec, conditions: list[Condition]
) -> TrainingDesign:
    """Assign every cell to a group and a context, and encode each group's network inputs."""
    obs = adata.obs
    keys = list(setup.covariate_keys)
    context_frame = obs[keys].astype(str) if keys else pd.DataFrame(index=obs.index)
    if keys:
        context_codes, context_uniques = pd.factorize(pd.MultiIndex.from_frame(context_frame))
        contexts = [tuple(c) for c in context_uniques]
    else:
        context_codes, contexts = np.zeros(adata.n_obs, dtype=np.int64), [()]
    time = obs[setup.time_key].astype(float).to_numpy() if setup.time_key else np.zeros(adata.n_obs)
    cond_codes, cond_uniques = pd.factorize(pd.Series(conditions, dtype=object))
    group_codes, group_keys = pd.factorize(pd.MultiIndex.from_arrays([cond_codes, context_codes, time]))
    group_conditions = [cond_uniques[c] for c, _, _ in group_keys]
    token_ids, doses, mask = codec.encode_conditions(group_conditions)
    covariate_rows = [dict(zip(keys, contexts[ctx])) for _, ctx, _ in group_keys]
    covariates = codec.encode_covariates(covariate_rows) if keys else torch.zeros(len(group_keys), 0, dtype=torch.long)
    table = GroupTable(
        token_ids=token_ids,
        doses=doses,
        mask=mask,
        covariates=covariates,
        time=torch.tensor([t for _, _, t in group_keys], dtype=torch.float32),
    )
    is_control = np.array([c.is_control for c in conditions])
    group_context = np.array([ctx for _, ctx, _ in group_keys], dtype=np.int64)
    return TrainingDesign(
        group_codes.astype(np.int64),
        np.asarray(context_codes, dtype=np.int64),
        contexts,
        is_control,
        group_context,
        table,
    )
