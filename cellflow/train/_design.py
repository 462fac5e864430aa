"""The training design: which cells form which group, in which context (and at which time point)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..flow import ConditionBatch
from ..pp._codec import ConditionCodec
from ..pp._conditions import Condition
from ..pp._setup import SetupConfig
from ._groups import GroupIndex


@dataclass
class TrainingDesign:
    """Groups of the training cells and their network inputs.

    A group is condition x context x time point for backbones that take time as part of the
    condition, and condition x context (a group followed over every time
    point) for backbones over time (``over_time=True`` in :func:`build_training_design`).

    Attributes
    ----------
    group, context
        ``(N,)`` group and context code of every cell.
    contexts
        Covariate values of each context code.
    is_control
        ``(N,)`` whether the cell is a control cell.
    group_context
        ``(G,)`` context of each group.
    table
        Network inputs and context of every group (its ``time`` is zero for groups over time).
    time
        ``(N,)`` experimental time of every cell (zero without a ``time_key``).
    time_points
        Sorted distinct times of the training cells (``[0.0]`` without a ``time_key``).
    time_code
        ``(N,)`` index of every cell's time in ``time_points``.
    group_condition
        ``(G,)`` condition code of each group (groups of one condition share it across
        contexts and time points).
    group_is_control
        ``(G,)`` whether the group holds control cells.
    over_time
        Groups are followed over all time points (for backbones over time).
    has_time
        The data have experimental times (a ``time_key``).
    """

    group: np.ndarray
    context: np.ndarray
    contexts: list
    is_control: np.ndarray
    group_context: np.ndarray
    table: ConditionBatch
    time: np.ndarray
    time_points: np.ndarray
    group_condition: np.ndarray
    group_is_control: np.ndarray
    over_time: bool = False
    has_time: bool = False
    time_code: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.time_code = np.searchsorted(self.time_points, self.time).astype(np.int64)

    @property
    def n_groups(self) -> int:
        """Number of groups."""
        return len(self.group_context)

    def index(self) -> GroupIndex:
        """The cells of every group (at every time point, for groups over time) and the controls of every context."""
        if not self.over_time:
            return GroupIndex.build(self.group, self.context, self.is_control, self.n_groups, len(self.contexts))
        return GroupIndex.build(
            self.group,
            self.context,
            self.is_control,
            self.n_groups,
            len(self.contexts),
            time_code=self.time_code,
            n_times=len(self.time_points),
        )


def build_training_design(
    adata,
    setup: SetupConfig,
    codec: ConditionCodec,
    conditions: list[Condition],
    *,
    over_time: bool = False,
    contexts: list[tuple[str, ...]] | None = None,
) -> TrainingDesign:
    """Assign every cell to a group and a context, and encode each group's network inputs.

    Parameters
    ----------
    adata
        Training data, registered with :func:`cellflow.pp.setup`.
    setup
        Its registration.
    codec
        Encodes conditions and covariates.
    conditions
        Condition of every cell.
    contexts
        The order of the context codes, e.g. a trained model's (its token shifts and control
        reference are indexed by them); by default the order in which the cells show them.
    over_time
        Group by condition x context only (groups followed over time, for backbones over time). Every
        condition must then be measured at every time point in its context, and the control
        cells of every such context too: a trajectory needs a state at each time point.

    Raises
    ------
    ValueError
        With ``over_time``: no ``time_key``, or a condition (or the controls) not measured at
        every time point; the message names them.
    """
    obs = adata.obs
    keys = list(setup.covariate_keys)
    context_frame = obs[keys].astype(str) if keys else pd.DataFrame(index=obs.index)
    if not keys:
        context_codes, contexts = np.zeros(adata.n_obs, dtype=np.int64), [()]
    elif contexts is None:
        context_codes, context_uniques = pd.factorize(pd.MultiIndex.from_frame(context_frame))
        contexts = [tuple(c) for c in context_uniques]
    else:
        contexts = [tuple(c) for c in contexts]
        context_codes = pd.MultiIndex.from_tuples(contexts).get_indexer(pd.MultiIndex.from_frame(context_frame))
        if (context_codes < 0).any():
            unknown = context_frame[context_codes < 0].drop_duplicates().head(5).to_dict("records")
            raise ValueError(f"Contexts {unknown} are not among the model's {contexts[:10]}.")
    if over_time and setup.time_key is None:
        raise ValueError("Trajectory groups need experimental time: call cf.pp.setup(..., time_key=...) first.")
    time = obs[setup.time_key].astype(float).to_numpy() if setup.time_key else np.zeros(adata.n_obs)
    time_points = np.unique(time)
    cond_codes, cond_uniques = pd.factorize(pd.Series(conditions, dtype=object))
    group_time = np.zeros(adata.n_obs) if over_time else time
    group_codes, group_keys = pd.factorize(pd.MultiIndex.from_arrays([cond_codes, context_codes, group_time]))
    if over_time:
        _check_time_courses(group_codes, group_keys, cond_uniques, contexts, time, time_points, setup)
    group_conditions = [cond_uniques[c] for c, _, _ in group_keys]
    token_ids, doses, mask = codec.encode_conditions(group_conditions)
    covariate_rows = [dict(zip(keys, contexts[ctx])) for _, ctx, _ in group_keys]
    covariates = codec.encode_covariates(covariate_rows) if keys else torch.zeros(len(group_keys), 0, dtype=torch.long)
    group_context = np.array([ctx for _, ctx, _ in group_keys], dtype=np.int64)
    table = ConditionBatch(
        token_ids=token_ids,
        doses=doses,
        mask=mask,
        covariates=covariates,
        time=torch.tensor([t for _, _, t in group_keys], dtype=torch.float32),
        context=torch.as_tensor(group_context),
    )
    is_control = np.array([c.is_control for c in conditions])
    group_condition = np.array([c for c, _, _ in group_keys], dtype=np.int64)
    return TrainingDesign(
        group=group_codes.astype(np.int64),
        context=np.asarray(context_codes, dtype=np.int64),
        contexts=contexts,
        is_control=is_control,
        group_context=group_context,
        table=table,
        time=time,
        time_points=time_points,
        group_condition=group_condition,
        group_is_control=np.array([cond_uniques[c].is_control for c in group_condition], dtype=bool),
        over_time=over_time,
        has_time=setup.time_key is not None,
    )


def _check_time_courses(group_codes, group_keys, cond_uniques, contexts, time, time_points, setup) -> None:
    """Every group over time (controls included) must be measured at every time point."""
    measured = pd.crosstab(group_codes, time).reindex(columns=time_points, fill_value=0) > 0  # (G, T)
    incomplete = np.flatnonzero(~measured.to_numpy().all(axis=1))
    if len(incomplete) == 0:
        return
    lines = []
    for g in incomplete[:10]:
        cond, ctx, _ = group_keys[g]
        missing = [f"{t:g}" for t in time_points[~measured.to_numpy()[g]]]
        where = f" in {dict(zip(setup.covariate_keys, contexts[ctx]))}" if setup.covariate_keys else ""
        lines.append(f"{cond_uniques[cond].label(setup.control, setup.combo_sep)!r}{where}: no cells at {missing}")
    more = f" (and {len(incomplete) - 10} more)" if len(incomplete) > 10 else ""
    raise ValueError(
        f"A backbone over time needs every condition, and the controls of its context, measured at every time "
        f"point {[f'{t:g}' for t in time_points]} of {setup.time_key!r}; incomplete{more}:\n  "
        + "\n  ".join(lines)
        + "\nDrop these cells (or time points), or use a backbone that takes time as part of the condition "
        "(backbone='mlp' or 'set_attention')."
    )
