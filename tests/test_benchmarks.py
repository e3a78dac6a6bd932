"""Smoke test of the speed benchmarks at a tiny size: they run, agree with themselves, write CSV."""

from __future__ import annotations

import csv
import math

from benchmarks import replicates, step_speed

TINY = ["--sizes", "32", "--model", "skip_tiny", "--logger", "none", "--repeats", "1"]


def test_step_speed_times_platform_and_plain_loop_on_the_same_math(tmp_path):
    out = tmp_path / "speed.csv"
    rows = step_speed.main(
        [*TINY, "--methods", "mfvi", "--tasks", "inpainting", "--steps", "4", "--out", str(out)]
    )
    (row,) = rows
    assert row["plain_ms"] > 0 and row["platform_ms"] > 0 and row["gflop_per_step"] > 0
    assert 0 < row["peak_fraction"] < 1
    # same network, seed and noise: both loops end at the same output
    assert math.isclose(row["plain_psnr"], row["platform_psnr"], abs_tol=1e-3)
    with open(out) as handle:
        assert next(csv.DictReader(handle))["method"] == "mfvi"


def test_replicates_benchmark_compares_batched_and_sequential(tmp_path):
    args = ["--size", "32", "--model", "skip_tiny", "--logger", "none", "--repeats", "1", "--methods", "dip"]
    rows = replicates.main(
        [*args, "--replicates", "2", "--steps", "4", "--warmup", "1", "--out", str(tmp_path / "r.csv")]
    )
    assert [r["replicates"] for r in rows] == [1, 2]
    assert rows[0]["vs_single"] == 1.0 and rows[1]["speedup"] == 2 / rows[1]["vs_single"]
