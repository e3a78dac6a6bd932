"""Every stopping criterion through real runs of the platform, in-process and from the command line.

The runs are small (the tiny network, 64x64 or 32x32 images, at most 150 steps) with windows and
patiences short enough that ES-WMV and ES-EMV really stop before ``max_steps``. What is checked is
what a user reads: metrics.json, reconstruction.npy and the exit status.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from dip_lightning.errors import ConfigError
from dip_lightning.job.results import REPORTED_SUFFIX, stopping_lines
from dip_lightning.job.run import run
from dip_lightning.metrics.image import psnr
from dip_lightning.physics.ray_transform import CACHE_ENV_VAR
from dip_lightning.stopping.discrepancy import NOISE_ESTIMATED, NOISE_FROM_PROBLEM
from tests.conftest import config_options, run_cli

CRITERIA = config_options("stopping")
METHODS = config_options("method")
TASKS = config_options("task")
# Educated DIP starts from a pretrained network; fit() below passes none (test_methods.py runs it).
NEEDS_CHECKPOINT = {"edip": "method=edip needs a pretrained network (method.checkpoint)"}
# Pairs the 30-step matrix below cannot exercise, and why.
TOO_SHORT = {
    ("discrepancy", "ct"): "30 steps leave the sinogram residual (about 100) far above the discrepancy "
    "target (0.5); test_wmv_stops_early_on_ct runs a stopping rule on CT",
}
DETECTION_KEYS = (
    "detected_step",
    "detected_psnr",
    "detected_ssim",
    "peak_psnr",
    "peak_step",
    "detection_gap",
)
# Short window and patience: on these 150-step runs the variances bottom out around step 90 and
# patience 20 ends the run well before max_steps.
WMV = ("stopping=wmv", "stopping.criterion.window=10", "stopping.criterion.patience=20")
EMV = ("stopping=emv", "stopping.criterion.alpha=0.1", "stopping.criterion.patience=20")
MAX_STEPS = 150
CT_MAX_STEPS = 400
# torchmetrics' PSNR of a saved float32 image against the per-step PSNR of the same image.
PSNR_TOLERANCE = 1e-3


@pytest.fixture(autouse=True)
def keep_thread_count():
    """The runs below use one thread (fast on shared cores); later tests get the old count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def fit(small_config, *overrides: str) -> dict:
    """Run one in-process job on one thread and return its metrics.json."""
    cfg = small_config("num_threads=1", *overrides)
    run(cfg)
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def saved_reconstruction_psnr(run_dir: Path) -> float:
    """PSNR of reconstruction.npy against ground_truth.npy, as written to disk."""
    reconstruction = torch.from_numpy(np.load(run_dir / "reconstruction.npy")).unsqueeze(0)
    truth = torch.from_numpy(np.load(run_dir / "ground_truth.npy")).unsqueeze(0)
    return float(psnr(reconstruction, truth))


def assert_reports_the_detected_output(metrics: dict, run_dir: Path, criterion: str) -> None:
    """The reconstruction on disk is the image reported for the detected step (the raw output, or
    the output EMA for criteria whose ``stopping.report`` is ``ema`` or ``ema_centred``), and the
    gap adds up."""
    for key in DETECTION_KEYS:
        assert key in metrics, f"{key} missing from metrics.json: {sorted(metrics)}"
    assert metrics["criterion"] == criterion
    assert 0 <= metrics["detected_step"] < metrics["steps"]
    ema_sources = [f"stopping:{criterion}{suffix}" for suffix in REPORTED_SUFFIX.values()]
    if metrics["reconstruction_source"] in ema_sources:
        reported = metrics["detected_ema_psnr"]
    else:
        assert metrics["reconstruction_source"] == f"stopping:{criterion}"
        reported = metrics["detected_psnr"]
    assert metrics["psnr"] == pytest.approx(reported, abs=PSNR_TOLERANCE)
    assert saved_reconstruction_psnr(run_dir) == pytest.approx(reported, abs=PSNR_TOLERANCE)
    assert metrics["detection_gap"] == pytest.approx(metrics["peak_psnr"] - metrics["detected_psnr"])
    # The peak is the best raw output of the run, and the detected image is one of them.
    assert metrics["detection_gap"] >= -PSNR_TOLERANCE
    assert 0 < metrics["detected_ssim"] <= 1


def assert_stopped_early(
    metrics: dict, patience: int, check_every: int = 10, max_steps: int = MAX_STEPS
) -> None:
    """Stopped at the first check at least ``patience`` steps after the detection."""
    assert metrics["stopped_early"] is True
    assert metrics["steps"] < max_steps
    assert metrics["steps"] == metrics["stop_step"] + 1
    waited = metrics["stop_step"] - metrics["detected_step"]
    assert patience <= waited < patience + check_every


# --------------------------------------------------------------------------------- one per criterion


@pytest.mark.long
def test_wmv_stops_early_and_reports_the_output_at_the_detected_step(small_config, tmp_path):
    metrics = fit(small_config, "method=dip", *WMV, f"trainer.max_steps={MAX_STEPS}")
    assert_reports_the_detected_output(metrics, tmp_path, "wmv")
    assert_stopped_early(metrics, patience=20)
    assert metrics["detected_step"] >= 9  # no score before the 10-step window is full


@pytest.mark.long
def test_emv_stops_early_with_sgld_and_logs_the_detection(small_config, tmp_path):
    metrics = fit(small_config, "method=sgld", "logger=csv", *EMV, f"trainer.max_steps={MAX_STEPS}")
    assert_reports_the_detected_output(metrics, tmp_path, "emv")
    assert_stopped_early(metrics, patience=20)
    assert metrics["detected_step"] >= 10  # scores are compared after the ceil(1/alpha) warm-up
    # The loggers (W&B included) get the same numbers as final/<key>.
    (metrics_csv,) = tmp_path.glob("csv/**/metrics.csv")
    (final,) = [row for row in csv.DictReader(metrics_csv.open()) if row.get("final/detected_step")]
    for key in DETECTION_KEYS:
        assert float(final[f"final/{key}"]) == pytest.approx(metrics[key], abs=1e-6), key


@pytest.mark.long
def test_wmv_stops_early_on_ct(small_config, tmp_path, monkeypatch):
    """Criteria only read the output and the misfit, so a sinogram task needs nothing special."""
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))  # system matrices stay in tmp
    # Without input perturbation (the CT default) the output settles later than on denoising. The
    # phantom's TV weight (3e-4): at the real-slice default 3e-3 this run keeps improving to its end.
    metrics = fit(
        small_config,
        "task=ct",
        "method=dip",
        "regulariser.weight=3e-4",
        *WMV,
        f"trainer.max_steps={CT_MAX_STEPS}",
    )
    assert_reports_the_detected_output(metrics, tmp_path, "wmv")
    assert_stopped_early(metrics, patience=20, max_steps=CT_MAX_STEPS)


@pytest.mark.long
@pytest.mark.parametrize("report", ["ema", "output", "ema_centred"])
def test_report_chooses_the_ema_or_the_raw_output_at_the_detected_step(small_config, tmp_path, report):
    metrics = fit(
        small_config, "method=dip", *WMV, f"stopping.report={report}", f"trainer.max_steps={MAX_STEPS}"
    )
    curves = json.loads((tmp_path / "curves.json").read_text())
    step = metrics["detected_step"]
    assert metrics["detected_psnr" if report == "output" else "detected_ema_psnr"] == pytest.approx(
        metrics["psnr"], abs=PSNR_TOLERANCE
    )
    assert metrics["detected_psnr"] == pytest.approx(curves["psnr"][step], abs=PSNR_TOLERANCE)
    if report == "ema":
        assert metrics["psnr"] == pytest.approx(curves["psnr_ema"][step], abs=PSNR_TOLERANCE)
        assert metrics["reconstruction_source"] == "stopping:wmv (output EMA)"
    elif report == "ema_centred":
        # The run stops 20 steps after the detection, before the EMA (lag 99) is centred on it:
        # the last EMA is the closest to the centred one.
        assert metrics["stop_step"] < step + 99
        assert metrics["psnr"] == pytest.approx(curves["psnr_ema"][-1], abs=PSNR_TOLERANCE)
        assert metrics["reconstruction_source"] == "stopping:wmv (output EMA centred on it)"
    else:
        assert metrics["reconstruction_source"] == "stopping:wmv"


@pytest.mark.long
def test_centred_ema_is_read_one_mean_ema_age_after_the_detection(small_config, tmp_path):
    # EMA decay 0.8: the mean age of its outputs is 0.8 / 0.2 = 4 steps, well inside the patience.
    metrics = fit(
        small_config,
        "method=dip",
        *WMV,
        "method.ema_decay=0.8",
        "stopping.report=ema_centred",
        f"trainer.max_steps={MAX_STEPS}",
    )
    curves = json.loads((tmp_path / "curves.json").read_text())
    step = metrics["detected_step"]
    assert metrics["stopped_early"] and metrics["stop_step"] >= step + 4
    assert metrics["psnr"] == pytest.approx(curves["psnr_ema"][step + 4], abs=PSNR_TOLERANCE)
    assert metrics["detected_ema_psnr"] == pytest.approx(metrics["psnr"], abs=PSNR_TOLERANCE)


def test_discrepancy_stops_at_the_simulated_noise_level(small_config, tmp_path):
    metrics = fit(small_config, "method=dip", "stopping=discrepancy", "trainer.max_steps=100")
    assert_reports_the_detected_output(metrics, tmp_path, "discrepancy")
    assert (metrics["noise_std"], metrics["noise_std_source"]) == (pytest.approx(0.1), NOISE_FROM_PROBLEM)
    # The first check after the misfit reached tau * delta ends the run.
    assert metrics["stopped_early"] and metrics["steps"] < 100
    assert 0 <= metrics["stop_step"] - metrics["detected_step"] < 10
    # The score is the misfit at the detected step: at most tau * sigma * sqrt(64 * 64).
    assert metrics["best_score"] <= 1.1 * 0.1 * 64


@pytest.mark.long
def test_discrepancy_with_an_estimated_noise_level(small_config, tmp_path):
    metrics = fit(
        small_config,
        "method=dip",
        "stopping=discrepancy",
        "stopping.criterion.noise_std=estimate",
        "trainer.max_steps=100",
        # Clipping to [0, 1] removes part of the noise (the estimate falls to about 0.07): the
        # estimator is checked on the Gaussian noise it models.
        "noise.clip=false",
    )
    assert metrics["noise_std_source"] == NOISE_ESTIMATED
    assert metrics["noise_std"] == pytest.approx(0.1, rel=0.2)  # simulated sigma 0.1
    assert_reports_the_detected_output(metrics, tmp_path, "discrepancy")
    assert metrics["stopped_early"] and metrics["steps"] < 100


@pytest.mark.long
def test_oracle_detects_the_methods_peak_step(small_config, tmp_path):
    """Oracle and the method's peak tracking number the steps the same way: same step, same PSNR."""
    metrics = fit(small_config, "method=mcdropout", "stopping=oracle", "trainer.max_steps=100")
    assert_reports_the_detected_output(metrics, tmp_path, "oracle")
    assert metrics["detected_step"] == metrics["peak_step"]
    assert metrics["detected_psnr"] == pytest.approx(metrics["peak_psnr"], abs=PSNR_TOLERANCE)
    assert metrics["detection_gap"] == pytest.approx(0.0, abs=PSNR_TOLERANCE)
    assert metrics["steps"] == 100 and metrics["stopped_early"] is False  # patience null: never stops


@pytest.mark.long
def test_fixed_run_watched_by_a_monitor_matches_the_wmv_run(small_config, tmp_path):
    """A fixed run, with ES-WMV and the oracle watching, gives what a run stopped by ES-WMV gives.

    This is how benchmarks/stopping_gap.py measures every criterion from one run per image.
    """
    stopped = fit(small_config, "method=dip", *WMV, f"trainer.max_steps={MAX_STEPS}")
    stopped_psnr = saved_reconstruction_psnr(tmp_path)

    cfg = small_config("num_threads=1", "method=dip", "stopping=fixed", f"trainer.max_steps={MAX_STEPS}")
    with open_dict(cfg):
        cfg.callbacks.monitor = {
            "_target_": "dip_lightning.stopping.monitor.StoppingMonitor",
            "path": str(tmp_path / "monitor.json"),
            "criteria": {
                "wmv": {
                    "_target_": "dip_lightning.stopping.wmv.WindowedMovingVariance",
                    "window": 10,
                    "patience": 20,
                },
                "oracle": {"_target_": "dip_lightning.stopping.oracle.Oracle"},
            },
        }
    run(cfg)
    fixed = json.loads((tmp_path / "metrics.json").read_text())
    watched = json.loads((tmp_path / "monitor.json").read_text())

    assert fixed["steps"] == MAX_STEPS and fixed["stopped_early"] is False
    wmv = watched["criteria"]["wmv"]
    assert (wmv["detected_step"], wmv["stop_step"]) == (stopped["detected_step"], stopped["stop_step"])
    assert wmv["detected_psnr"] == pytest.approx(stopped["detected_psnr"], abs=PSNR_TOLERANCE)
    assert stopped_psnr == pytest.approx(stopped["detected_ema_psnr"], abs=PSNR_TOLERANCE)  # report: ema
    oracle = watched["criteria"]["oracle"]
    assert oracle["detected_step"] == fixed["peak_step"] == watched["peak_step"]
    assert oracle["detection_gap"] == pytest.approx(0.0, abs=PSNR_TOLERANCE)

    # For `fixed` the detected output is the last one; the reconstruction is the method's EMA.
    assert fixed["detected_step"] == MAX_STEPS - 1
    assert fixed["reconstruction_source"] == "ema"
    assert fixed["detection_gap"] == pytest.approx(fixed["peak_psnr"] - fixed["detected_psnr"])


# ------------------------------------------------------------------- every criterion x every method


def matrix() -> list:
    """All criterion x method pairs; tasks rotate so each pair of the three axes meets. One method
    per criterion runs in the quick loop, the other pairs are marked ``long``."""
    params = []
    for i, criterion in enumerate(CRITERIA):
        row = [(method, TASKS[(i + j) % len(TASKS)]) for j, method in enumerate(METHODS)]
        reasons = {
            method: NEEDS_CHECKPOINT.get(method) or TOO_SHORT.get((criterion, task)) for method, task in row
        }
        runnable = [method for method, _ in row if not reasons[method]]
        quick = runnable[i % len(runnable)]
        for method, task in row:
            marks = [] if method == quick else [pytest.mark.long]
            if reasons[method]:
                marks.append(pytest.mark.skip(reason=reasons[method]))
            params.append(pytest.param(criterion, method, task, marks=marks))
    return params


MATRIX_STEPS = 30
CRITERION_SETTINGS = {
    "fixed": [],
    "wmv": ["stopping.criterion.window=5", "stopping.criterion.patience=10"],
    # The reference warm-up (100 steps) is longer than these 30-step runs.
    "emv": ["stopping.criterion.alpha=0.25", "stopping.criterion.patience=10", "stopping.criterion.warmup=4"],
    # A loose target (rms residual 0.5) that even MFVI's slow start meets within 30 steps: this
    # checks the wiring, not the stopping point. Noise-free tasks need the noise level set.
    "discrepancy": ["stopping.criterion.tau=5.0", "stopping.criterion.noise_std=0.1"],
    "oracle": [],
    # A queue of 5 outputs and a patience of 10 instead of 256 and 500, so that 30 steps score.
    "self_validation": ["stopping.criterion.window=5", "stopping.criterion.patience=10"],
}


@pytest.mark.parametrize(("criterion", "method", "task"), matrix())
def test_every_criterion_with_every_method(small_config, tmp_path, criterion, method, task):
    metrics = fit(
        small_config,
        f"task={task}",
        f"method={method}",
        f"stopping={criterion}",
        *CRITERION_SETTINGS[criterion],
        "data.size=32",
        f"trainer.max_steps={MATRIX_STEPS}",
        f"trainer.check_val_every_n_epoch={MATRIX_STEPS}",
    )
    assert metrics["status"] == "completed"
    assert metrics["steps"] <= MATRIX_STEPS
    if criterion == "fixed":
        assert metrics["steps"] == MATRIX_STEPS and metrics["detected_step"] == MATRIX_STEPS - 1
        assert not metrics["reconstruction_source"].startswith("stopping:")
        assert metrics["detection_gap"] == pytest.approx(metrics["peak_psnr"] - metrics["detected_psnr"])
        return
    assert_reports_the_detected_output(metrics, tmp_path, criterion)
    if metrics["stopped_early"]:
        assert metrics["steps"] == metrics["stop_step"] + 1
    if criterion == "oracle":
        assert metrics["detected_step"] == metrics["peak_step"]
    if criterion == "discrepancy":
        assert metrics["noise_std"] == pytest.approx(0.1)


# ------------------------------------------------------------------------------- bad settings


def test_discrepancy_on_a_noise_free_task_needs_a_noise_level(small_config, tmp_path):
    with pytest.raises(ConfigError, match="noise-free") as info:
        fit(small_config, "task=inpainting", "stopping=discrepancy", "trainer.max_steps=5")
    assert info.value.setting == "stopping.criterion.noise_std"
    assert not (tmp_path / "metrics.json").exists()  # refused before training


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (("stopping=wmv", "stopping.criterion.window=1"), "stopping.criterion.window"),
        (("stopping=emv", "stopping.criterion.alpha=0"), "stopping.criterion.alpha"),
        (("stopping=oracle", "stopping.criterion.patience=0"), "stopping.criterion.patience"),
        (("stopping=discrepancy", "stopping.criterion.tau=0.5"), "stopping.criterion.tau"),
        (("stopping=discrepancy", "stopping.criterion.noise_std=loud"), "stopping.criterion.noise_std"),
        (("stopping=fixed", "stopping.criterion.check_every=0"), "stopping.criterion.check_every"),
        (("stopping=wmv", "stopping.report=mean"), "stopping.report"),
    ],
)
def test_bad_stopping_settings_fail_before_training(small_config, tmp_path, overrides, setting):
    with pytest.raises(ConfigError) as info:
        fit(small_config, *overrides)
    assert info.value.setting == setting
    assert not (tmp_path / "metrics.json").exists()


# ------------------------------------------------------------------------------- command line


@pytest.mark.heavy
def test_wmv_from_the_command_line(tmp_path):
    result = run_cli(
        ["preset=small", "logger=none", "num_threads=1", *WMV, f"trainer.max_steps={MAX_STEPS}"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wmv: reconstruction = output EMA centred on step" in result.stdout
    assert "stopped at step" in result.stdout and "had not improved for 20 steps" in result.stdout
    (metrics_file,) = tmp_path.glob("outputs/**/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert_reports_the_detected_output(metrics, metrics_file.parent, "wmv")
    assert_stopped_early(metrics, patience=20)


@pytest.mark.heavy
def test_bad_stopping_setting_from_the_command_line(tmp_path):
    result = run_cli(["preset=small", "logger=none", "stopping=wmv", "stopping.criterion.window=1"], tmp_path)
    assert result.returncode == 2
    assert "stopping.criterion.window" in result.stderr
    assert not list(tmp_path.glob("outputs/**/metrics.json"))


@pytest.mark.heavy
def test_data_parallel_ranks_stop_together(tmp_path):
    """Two CPU ranks draw different dropout masks, so their criteria disagree; rank zero decides.

    Were each rank to follow its own criterion, rank zero would stop at step 20 here and rank one
    would crash waiting for it (rank zero still exits 0, so the traceback is what shows it).
    """
    result = run_cli(
        [
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "preset=small",
            "logger=none",
            "num_threads=1",
            "method=mcdropout",
            "stopping=wmv",
            "stopping.criterion.window=5",
            "stopping.criterion.patience=10",
            f"trainer.max_steps={MAX_STEPS}",
        ],
        tmp_path,
        timeout=420,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output and "Error executing job" not in output, output[-4000:]
    (metrics_file,) = tmp_path.glob("outputs/**/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert_reports_the_detected_output(metrics, metrics_file.parent, "wmv")
    assert_stopped_early(metrics, patience=10)


def test_summary_lines_only_for_rules_whose_detection_is_reported():
    metrics = {
        "criterion": "wmv",
        "reports_detection": True,
        "detected_step": 5,
        "stopped_early": True,
        "stop_step": 9,
        "stop_reason": "its score had not improved for 4 steps since step 5",
        "reconstruction_source": "stopping:wmv (output EMA)",
    }
    lines = stopping_lines(metrics)
    assert lines[0] == "  wmv: reconstruction = output EMA at step 5"
    centred = stopping_lines({**metrics, "reconstruction_source": "stopping:wmv (output EMA centred on it)"})
    assert centred[0] == "  wmv: reconstruction = output EMA centred on step 5"
    raw = stopping_lines({**metrics, "reconstruction_source": "stopping:wmv"})
    assert raw[0] == "  wmv: reconstruction = raw output at step 5"
    assert lines[1] == "  stopped at step 9: its score had not improved for 4 steps since step 5"
    assert stopping_lines({**metrics, "criterion": "fixed", "reports_detection": False}) == []
