"""vcc_score: the Virtual Cell Challenge's scaling of scores against a baseline, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellflow.metrics import VCC_METRICS, vcc_score


def test_scaling_by_hand():
    scores = {"overlap_at_N": 0.5, "discrimination_score_l1": 0.8, "mae": 0.1}
    baseline = {"overlap_at_N": 0.2, "discrimination_score_l1": 0.6, "mae": 0.2}
    result = vcc_score(scores, baseline)
    assert list(result.index) == [*VCC_METRICS, "avg_score"]
    # (0.5 - 0.2) / (1 - 0.2), (0.8 - 0.6) / (1 - 0.6), 1 - 0.1 / 0.2
    np.testing.assert_allclose(result.to_numpy(), [0.375, 0.5, 0.5, (0.375 + 0.5 + 0.5) / 3])


def test_baseline_scores_zero_and_a_perfect_method_one():
    baseline = pd.Series({"overlap_at_N": 0.1, "discrimination_score_l1": 0.5, "mae": 0.05})
    assert (vcc_score(baseline, baseline) == 0.0).all()
    perfect = {"overlap_at_N": 1.0, "discrimination_score_l1": 1.0, "mae": 0.0}
    assert (vcc_score(perfect, baseline) == 1.0).all()


def test_worse_than_baseline_and_undefined_count_as_zero():
    scores = {"overlap_at_N": 0.0, "discrimination_score_l1": 0.9, "mae": 0.3}
    # mae worse than the baseline's -> negative, clipped to 0; a baseline at the best value divides by zero.
    result = vcc_score(scores, {"overlap_at_N": 0.2, "discrimination_score_l1": 1.0, "mae": 0.1})
    np.testing.assert_array_equal(result.to_numpy(), [0.0, 0.0, 0.0, 0.0])
    nan_score = vcc_score({**scores, "mae": np.nan}, {"overlap_at_N": 0.0, "discrimination_score_l1": 0.5, "mae": 0.1})
    np.testing.assert_allclose(nan_score.to_numpy(), [0.0, 0.8, 0.0, 0.8 / 3])


def test_other_metrics_and_errors():
    result = vcc_score(
        {"pearson_delta": 0.7, "mse": 0.5}, {"pearson_delta": 0.4, "mse": 1.0}, metrics=["pearson_delta", "mse"]
    )
    np.testing.assert_allclose(result.to_numpy(), [0.5, 0.5, 0.5])
    custom = vcc_score({"score": 0.5}, {"score": 0.0}, metrics=["score"], best={"score": 1.0})
    assert custom["avg_score"] == 0.5
    with pytest.raises(ValueError, match="No best value"):
        vcc_score({"score": 0.5}, {"score": 0.0}, metrics=["score"])
    with pytest.raises(ValueError, match="0.0 or 1.0"):
        vcc_score({"score": 0.5}, {"score": 0.0}, metrics=["score"], best={"score": 2.0})
    with pytest.raises(KeyError, match="baseline"):
        vcc_score({"mae": 0.5}, {}, metrics=["mae"])
    with pytest.raises(ValueError, match="empty"):
        vcc_score({}, {}, metrics=[])
