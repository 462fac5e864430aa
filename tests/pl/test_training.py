"""cf.pl.training: one line per loss curve of the history, in the VAE's and the flow's panels."""

from __future__ import annotations

import numpy as np
import pytest

import cellflow as cf
from tests.pl._helpers import curves

VAE = [900.0, 700.0, 650.0, 640.0, 635.0]
FLOW = [[0, 1.0], [50, 0.5], [100, 0.3], [150, 0.25]]
VALIDATION = [[50, 0.6], [150, 0.4]]
REFLOW = [[0, 0.2], [50, 0.1], [100, 0.08]]


def _history() -> dict:
    return {
        "vae_seconds": 1.0,
        "vae_loss": VAE,
        "flow_loss": FLOW,
        "flow_validation_loss": VALIDATION,
        "reflow_loss": REFLOW,
    }


def test_one_line_per_curve_with_its_values():
    figure = cf.pl.training(_history(), show=False)
    vae, flow = figure.axes
    assert (vae.get_title(), flow.get_title()) == ("VAE", "flow")
    vae_lines, flow_lines = curves(vae), curves(flow)
    assert list(vae_lines) == ["training"]
    np.testing.assert_array_equal(vae_lines["training"].get_xdata(), [1, 2, 3, 4, 5])  # epochs counted from 1
    np.testing.assert_array_equal(vae_lines["training"].get_ydata(), VAE)
    assert list(flow_lines) == ["flow", "flow validation", "reflow"]
    np.testing.assert_array_equal(flow_lines["flow"].get_ydata(), [1.0, 0.5, 0.3, 0.25])
    np.testing.assert_array_equal(flow_lines["flow validation"].get_xdata(), [50, 150])
    np.testing.assert_array_equal(flow_lines["reflow"].get_xdata(), [150, 200, 250])  # continues after the flow
    assert vae.get_yscale() == "log"  # every loss positive


def test_panels_without_curves_are_left_out():
    figure = cf.pl.training({"flow_loss": [0.5, 0.4, -0.1]}, show=False)
    (flow,) = figure.axes
    assert flow.get_title() == "flow" and list(curves(flow)) == ["flow"]
    assert flow.get_yscale() == "linear"  # a negative loss: no log scale


def test_smoothing_is_a_running_mean_of_the_flows_steps():
    losses = [4.0, 2.0, 0.0, 2.0, 4.0]
    figure = cf.pl.training({"flow_loss": losses, "vae_loss": losses}, smooth=2, show=False)
    vae, flow = (curves(ax) for ax in figure.axes)
    np.testing.assert_array_equal(flow["flow"].get_xdata(), [2, 3, 4, 5])
    np.testing.assert_array_equal(flow["flow"].get_ydata(), [3.0, 1.0, 1.0, 3.0])
    np.testing.assert_array_equal(vae["training"].get_ydata(), losses)  # epochs: drawn as recorded


def test_draws_on_given_axes():
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2)
    assert cf.pl.training(_history(), ax=axes, show=False) is figure
    assert len(curves(axes[1])) == 3
    with pytest.raises(ValueError, match="2 panel"):
        cf.pl.training(_history(), ax=axes[0], show=False)


def test_the_model_history(trained):
    """A trained model's history: its curves when it records them, else a clear error."""
    if "flow_loss" in trained.history or "vae_loss" in trained.history:
        figure = cf.pl.training(trained, show=False)
        assert sum(len(curves(ax)) for ax in figure.axes) >= 1
    else:
        with pytest.raises(ValueError, match="no loss curve"):
            cf.pl.training(trained, show=False)


def test_refuses_bad_input():
    with pytest.raises(ValueError, match="no loss curve"):
        cf.pl.training({"vae_seconds": 1.0}, show=False)
    with pytest.raises(ValueError, match="flow_loss"):
        cf.pl.training({"flow_loss": ["a", "b"]}, show=False)
    with pytest.raises(ValueError, match="flow_loss"):
        cf.pl.training({"flow_loss": [[1, 2, 3]]}, show=False)
    with pytest.raises(ValueError, match="smooth"):
        cf.pl.training(_history(), smooth=0, show=False)
    with pytest.raises(TypeError, match="CellFlow"):
        cf.pl.training("model/", show=False)
