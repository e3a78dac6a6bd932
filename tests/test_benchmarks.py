"""Smoke test of the speed benchmarks at a tiny size: they run, agree with themselves, write CSV."""

from __future__ import annotations

import csv
import math

import pytest

from benchmarks import ct_table, deblur_table, replicates, step_speed, stopping_gap

# Each test runs a benchmark end to end: make test and CI run them, make quick does not.
pytestmark = pytest.mark.long

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


def test_ct_table_runs_per_method_budgets_and_reuses_finished_jobs(tmp_path, monkeypatch):
    monkeypatch.setenv("DIP_LIGHTNING_CACHE", str(tmp_path / "cache"))
    args = [
        *("--size", "32", "--angles", "8", "--ellipses", "1", "--no-shepp-logan", "--model", "skip_tiny"),
        *("--methods", "fbp", "dip", "dip_tv", "--steps", "4", "--method-steps", "dip=2"),
        *("--out-dir", str(tmp_path / "table"), "--csv", str(tmp_path / "t.csv"), "--reuse"),
    ]
    rows = ct_table.main(args)
    steps = {r["method"]: r["steps"] for r in rows if r["image"] == "ellipses_0"}
    assert steps == {"FBP": 0, "DIP": 2, "DIP+TV": 4}
    metrics = tmp_path / "table" / "ellipses_0" / "dip" / "metrics.json"
    written = metrics.stat().st_mtime_ns
    again = ct_table.main(args)  # same jobs: read back, not run again
    assert metrics.stat().st_mtime_ns == written
    assert [r["psnr"] for r in again] == [r["psnr"] for r in rows]
    ct_table.main([a if a != "dip=2" else "dip=3" for a in args])  # another budget: run again
    assert metrics.stat().st_mtime_ns != written


def test_deblur_table_quick_runs_both_jobs_per_row_and_checks_the_goals(tmp_path, capsys):
    rows = deblur_table.main(
        [
            "--quick",
            "--files",
            "--out-dir",
            str(tmp_path / "table"),
            "--csv",
            str(tmp_path / "d.csv"),
            "--figure",
            str(tmp_path / "f.png"),
        ]
    )
    (row,) = rows
    assert row["image"] == "camera" and row["kernel"] == "motion_1" and row["steps"] == 4
    assert row["gap_to_nonblind"] == row["nonblind_psnr"] - row["blind_psnr"]
    assert row["error_ratio"] > 0 and math.isfinite(row["kernel_psnr"])
    for job in ("nonblind", "blind"):
        assert (tmp_path / "table" / "camera" / "motion_1" / job / "metrics.json").is_file()
    assert "blind" in capsys.readouterr().out and (tmp_path / "d.csv").is_file()
    assert (tmp_path / "f.png").is_file()


def test_stopping_gap_times_every_criterion_and_self_validation_per_k(tmp_path):
    out = tmp_path / "gap.csv"
    rows = stopping_gap.main(["--quick", "--sv-every", "1,4", "--csv", str(out)])
    names = [r["criterion"] for r in rows]
    assert names == [
        "wmv",
        "emv",
        "discrepancy",
        "discrepancy_est",
        "oracle",
        "self_validation_k1",
        "self_validation_k4",
    ]
    every, fourth = rows[-2], rows[-1]
    assert (
        every["detected_step"] >= 7 and every["detected_step"] == fourth["detected_step"]
    )  # same first score
    assert every["dip_ms_per_step"] > 0 and every["ms_per_step"] > fourth["ms_per_step"] > 0
    with open(out) as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)


def test_phase_retrieval_table_quick_mode_scores_hio_and_dip(tmp_path):
    from benchmarks import phase_retrieval_table

    out = tmp_path / "pr.csv"
    common = ["--quick", "--images", "shepp_logan", "--out-dir", str(tmp_path / "runs"), "--csv", str(out)]
    rows = phase_retrieval_table.main(common)
    assert [(r["noise"].split()[0], r["method"]) for r in rows] == [
        ("none", "HIO+ER"),
        ("none", "DIP @wmv"),
        ("poisson", "HIO+ER"),
        ("poisson", "DIP @wmv"),
    ]
    for hio, dip in (rows[:2], rows[2:]):
        assert math.isfinite(hio["psnr"]) and math.isfinite(dip["psnr"])
        assert dip["vs_hio"] == dip["psnr"] - hio["psnr"] and dip["steps"] == 5
    with open(out) as handle:
        assert len(list(csv.DictReader(handle))) == 4
    fed = phase_retrieval_table.main([*common, "--noises", "none", "--variants", "hio_input"])
    assert [r["method"] for r in fed] == ["HIO+ER", "DIP, HIO input @wmv"]
    assert fed[0]["psnr"] == rows[0]["psnr"]  # the same observation and HIO run


def test_drp_speed_times_both_methods_to_dips_peak_and_writes_csv(tmp_path):
    from benchmarks import drp_speed

    out = tmp_path / "drp.csv"
    (row,) = drp_speed.main(["--quick", "--out", str(out)])
    assert row["steps"] == 12 and row["dip_ms"] > 0 and row["drp_ms"] > 0
    assert row["target"] == row["dip_peak"] - drp_speed.MARGIN_DB
    # DIP reaches its own peak minus the margin by definition, no later than its peak step.
    assert row["dip_steps_to_target"] <= row["dip_peak_step"] and row["dip_s_to_target"] > 0
    assert row["drp_drop"] == row["drp_peak"] - row["drp_final"] >= 0
    with open(out) as handle:
        assert next(csv.DictReader(handle))["image"] == "camera"


def test_lin_dip_table_quick_ranks_six_predictives_on_one_scale(tmp_path):
    from benchmarks import lin_dip_table

    out = tmp_path / "lin_dip.csv"
    rows = lin_dip_table.main(["--quick", "--out", str(out)])
    assert sorted(r["method"] for r in rows) == sorted(lin_dip_table.ROWS)
    assert all(math.isfinite(r["loglik_patch1"]) and math.isfinite(r["loglik_full"]) for r in rows)
    # the two DIP rows share the fit; for isotropic variance both log-likelihoods agree
    dip = rows[0]
    assert dip["loglik_patch1"] == pytest.approx(dip["loglik_full"])
    with open(out) as handle:
        assert len(list(csv.DictReader(handle))) == 6
