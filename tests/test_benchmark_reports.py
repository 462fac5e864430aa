"""The benchmark scripts' reports: what they join, count and refuse (pandas only, no training)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import backbones  # noqa: E402
import norman_combinations  # noqa: E402
import time_to_quality  # noqa: E402

TIMES = [2.0, 6.0, 16.0, 48.0]


def course(late: dict[tuple[str, int], float], seeds=(0, 1, 2)) -> pd.DataFrame:
    """Time-course rows: energy 1.0 early; ``late[(method, seed)]`` at the last two time points (absent: no rows)."""
    rows = []
    for (method, seed), energy in late.items():
        if seed not in seeds:
            continue
        for t in TIMES:
            value = energy if t in TIMES[-backbones.LATE :] else 1.0
            rows.append(
                {"task": "time_course", "method": method, "seed": seed, "time": t, "condition": "A+B"}
                | {"energy_distance": value, "pearson_delta_top20": 0.5 + seed / 10, "run": f"run{seed}"}
            )
    return pd.DataFrame(rows)


def test_late_wins_count_seeds_where_the_backbone_is_below_additive_at_the_late_time_points():
    late = {("additive", s): 10.0 for s in (0, 1, 2)}
    late |= {("mamba", 0): 8.0, ("mamba", 1): 9.0, ("mamba", 2): 12.0}
    late |= {("mlp", 0): 11.0, ("mlp", 1): 9.5}  # mlp did not run with seed 2
    table = backbones.seeds_table(course(late))
    assert table.loc["mamba", "late wins"] == "2/3"
    assert table.loc["mlp", "late wins"] == "1/2"  # counted over the seeds it ran
    assert table.loc["additive", "late wins"] == ""
    # Pearson per time point: mean ± sd over the seeds (0.5, 0.6, 0.7).
    assert table.loc["mamba", "pd_top20@48h"] == "0.600 ± 0.100"
    assert table.loc["mamba", "energy@48h"] == f"{(8 + 9 + 12) / 3:.3f} ± {pd.Series([8.0, 9.0, 12.0]).std():.3f}"


def test_seeds_report_refuses_a_seed_from_two_runs_and_runs_with_different_settings():
    late = {("additive", 0): 10.0, ("mamba", 0): 8.0, ("additive", 1): 10.0, ("mamba", 1): 8.0}
    results = course(late)
    twice = pd.concat([results, results.assign(run="another")], ignore_index=True)
    with pytest.raises(SystemExit, match="more than one run"):
        backbones.seeds_table(twice)
    differing = results.assign(flow_steps=[1500 if s == 0 else 500 for s in results["seed"]])
    with pytest.raises(SystemExit, match="flow_steps"):
        backbones.seeds_table(differing)


def test_time_to_quality_report_keeps_cpu_and_gpu_runs_apart():
    cpu = argparse.Namespace(hardware="cpu", threads=2)
    gpu = argparse.Namespace(hardware="gpu", threads=8)
    old_cpu = pd.DataFrame({"point": ["a"], "seconds": [1.0]})  # written before the hardware was recorded
    on_gpu = pd.DataFrame({"point": ["b"], "seconds": [1.0], "hardware": ["gpu"], "device": ["one H200"]})
    assert time_to_quality.measured_device(old_cpu, cpu) is None
    assert time_to_quality.measured_device(on_gpu, gpu) == "one H200"
    with pytest.raises(SystemExit, match="measured on gpu but --hardware is cpu"):
        time_to_quality.measured_device(on_gpu, cpu)
    with pytest.raises(SystemExit, match="measured on cpu, gpu"):
        time_to_quality.measured_device(pd.concat([old_cpu, on_gpu]), gpu)
    two_gpus = pd.concat([on_gpu, on_gpu.assign(device="one H100")])
    with pytest.raises(SystemExit, match="different devices"):
        time_to_quality.measured_device(two_gpus, gpu)


def doubles(values: dict[str, list[float]], draws: int = 2) -> pd.DataFrame:
    """Norman rows: ``values[method][seed]`` as every metric's mean over two doubles and ``draws`` draws (+-0.5)."""
    rows = []
    for method, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            for condition in ("A+B", "C+D"):
                for draw in range(draws):
                    noise = 0.5 if draw % 2 else -0.5
                    metrics = dict.fromkeys(norman_combinations.METRICS, value + (noise if draws > 1 else 0.0))
                    rows.append({"method": method, "seed": seed, "condition": condition, "draw": draw} | metrics)
    return pd.DataFrame(rows)


def test_norman_verdicts_count_a_win_only_beyond_the_seed_spread():
    lines = norman_combinations.verdict_lines(doubles({"cellflow": [2.0, 4.0], "additive": [5.0, 5.2]}))
    energy = next(line for line in lines if line.startswith("energy distance:"))
    assert energy.endswith("WIN (by more than the seed spread)")  # 3.0 vs 5.1, spread 1.41
    pearson = next(line for line in lines if line.startswith("pearson delta top20"))
    assert pearson.endswith("NOT better")  # higher is better there: 3.0 < 5.1
    close = norman_combinations.verdict_lines(doubles({"cellflow": [2.0, 6.0], "additive": [5.0, 5.2]}))
    assert next(line for line in close if line.startswith("MMD:")).endswith("better, within the seed spread")
    one = norman_combinations.verdict_lines(doubles({"cellflow": [2.0], "additive": [5.0]}))
    assert one[0].endswith("better (one seed: no spread to judge)")


def test_norman_draw_spread_is_the_sd_over_draws_and_absent_for_one_draw():
    line = norman_combinations.draw_spread_line(doubles({"cellflow": [2.0, 4.0], "additive": [5.0, 5.0]}))
    # Per seed the draws' means are value -+ 0.5: sd over two draws sqrt(0.5), the same for every seed and method.
    assert line.endswith("cellflow 0.7071, additive 0.7071")
    assert norman_combinations.draw_spread_line(doubles({"cellflow": [2.0], "additive": [5.0]}, draws=1)) is None
    assert norman_combinations.draw_spread_line(doubles({"cellflow": [2.0]}).drop(columns="draw")) is None
