"""benchmarks/bench_precision.py at its --quick sizes: every part runs in both precisions and
prints its line. A smoke test: no timing is checked here (the targets live in the script)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.bench_precision import PARTS, BenchConfig, Measured, main, ratio_line
from training.ranges import ConfigError


def test_quick_run_prints_every_line_and_finite_times(capsys, one_torch_thread):
    results = main(["--quick"])
    out = capsys.readouterr().out

    assert set(results) == set(PARTS)
    for part, arms in results.items():
        expected = ({"fp32 step", "fp32 bound", "bf16 step", "bf16 bound"}
                    if part == "fbc_cached" else {"fp32", "bf16"})
        assert set(arms) == expected, part
        assert all(math.isfinite(s) and s > 0 for s in arms.values()), (part, arms)
    assert "python benchmarks/bench_precision.py --quick" in out.split("command: ")[1]
    assert f"torch {torch.__version__}" in out
    ratios = [line for line in out.splitlines() if " -> " in line and "(target >= " in line]
    assert len(ratios) == 4, out
    assert all("fp32 " in line and "bf16 " in line for line in ratios)
    bounds = [line for line in out.splitlines() if "step / bound" in line]
    assert len(bounds) == 2 and "(target <= 1.3x" in bounds[0], out


def test_parts_flag_runs_only_those(capsys, one_torch_thread):
    results = main(["--quick", "--parts", "fbc_cached"])
    assert list(results) == ["fbc_cached"]
    assert "fine-tuned" not in capsys.readouterr().out


def test_ratio_line_is_the_ratio_of_the_medians():
    measured = Measured({"fp32": [0.40, 0.90, 0.41], "bf16": [0.20, 0.21, 0.50]})
    line = ratio_line("x", measured, 1.6)
    assert line == "x: fp32 410 ms, bf16 210 ms -> 1.95x (target >= 1.6x: met)"
    assert "NOT met" in ratio_line("x", measured, 2.0)


def test_images_that_hit_the_bf16_unit_map_bug_are_refused():
    with pytest.raises(ConfigError, match="1 x 1 map"):
        BenchConfig(image_size=16)
    BenchConfig(image_size=16, parts=("ppo_frozen",))  # nothing trains the last stage
