"""What a newcomer meets first: each method's default stopping rule, progress output, the README
figures and the closing lines of a run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dip_lightning import figures
from dip_lightning.config import CONFIG_DIR, compose_config
from dip_lightning.errors import ConfigError
from dip_lightning.job.run import run
from dip_lightning.stopping.callback import StoppingCallback
from dip_lightning.stopping.fixed import FixedSteps
from dip_lightning.tracking.progress import ProgressReport, format_seconds

WMV = "dip_lightning.stopping.wmv.WindowedMovingVariance"
FIXED = "dip_lightning.stopping.fixed.FixedSteps"


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ default stopping


@pytest.mark.parametrize(
    ("overrides", "target", "report"),
    [
        ((), WMV, "ema_centred"),  # plain DIP stops early, reports the EMA centred on the detection
        (("method=dip", "task=ct"), WMV, "ema_centred"),
        (("stopping=fixed",), FIXED, None),  # the command line replaces the default
        (("stopping=emv",), "dip_lightning.stopping.emv.ExponentialMovingVariance", "ema_centred"),
        (("method=mfvi",), FIXED, None),  # methods that do not overfit run to their budget
        (("method=sgld",), FIXED, None),
        (("method=mcdropout",), FIXED, None),
        (("method=edip",), FIXED, None),
        (("method=gp",), FIXED, None),  # takes no training step: no rule has a step to pick
        (("experiment=paper_denoising", "method=dip"), FIXED, None),  # the comparison presets pin fixed
    ],
)
def test_default_stopping_rule_per_method(tmp_path, overrides, target, report):
    cfg = compose_config(list(overrides), tmp_path)
    assert cfg.stopping.criterion._target_ == target
    assert cfg.stopping.get("report") == report


def test_every_method_has_a_default_stopping_rule():
    methods = {path.stem for path in (CONFIG_DIR / "method").glob("*.yaml")}
    defaults = {path.stem for path in (CONFIG_DIR / "stopping" / "default").glob("*.yaml")}
    assert methods <= defaults, f"add conf/stopping/default/<method>.yaml for {sorted(methods - defaults)}"


def test_stopping_report_is_checked():
    with pytest.raises(ConfigError, match=r"stopping\.report='mean'.*'ema'.*'output'"):
        StoppingCallback(FixedSteps(), report="mean")


# ------------------------------------------------------------------------------------- progress


class FakeTrainer:
    """The few trainer attributes ProgressReport reads."""

    def __init__(self, step: int, max_steps: int = 1000) -> None:
        self.global_step = step
        self.max_steps = max_steps
        self.is_global_zero = True
        self.callback_metrics = {"train/loss": torch.tensor(0.0123), "train/psnr": torch.tensor(27.3)}


def test_progress_prints_lines_when_output_is_not_a_terminal():
    stream = io.StringIO()  # isatty() is False, as for CI, nohup or a batch job
    progress = ProgressReport(every_n_steps=250, stream=stream)
    assert progress.resolved_mode() == "lines"
    trainer = FakeTrainer(0)
    progress.on_train_start(trainer, None)
    for step in range(1, 501):
        trainer.global_step = step
        progress.on_train_batch_end(trainer, None, None, None, 0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert lines[0].startswith("step 250/1000  loss 0.0123  PSNR 27.30 dB")
    assert "steps/s" in lines[0] and "left" in lines[0]


def test_progress_draws_a_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = ProgressReport(stream=stream, bar_every=10)
    assert progress.resolved_mode() == "bar"
    trainer = FakeTrainer(0, max_steps=100)
    progress.on_train_start(trainer, None)
    for step in range(1, 51):
        trainer.global_step = step
        progress.on_train_batch_end(trainer, None, None, None, 0)
    progress.on_train_end(trainer, None)
    text = stream.getvalue()
    assert text.count("\r") == 5 and text.endswith("\n")
    assert "[##########..........] step 50/100" in text


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"mode": "loud"}, "callbacks.progress.mode"),
        ({"every_n_steps": 0}, "callbacks.progress.every_n_steps"),
    ],
)
def test_progress_settings_are_checked(kwargs, setting):
    with pytest.raises(ConfigError) as info:
        ProgressReport(**kwargs)
    assert info.value.setting == setting


def test_format_seconds():
    assert (format_seconds(75), format_seconds(3725)) == ("1:15", "1:02:05")


# ------------------------------------------------------------------------------ end of a run


@pytest.mark.long
def test_a_run_says_where_its_images_are_and_how_to_see_the_wandb_run(tmp_path, capsys, one_thread):
    cfg = compose_config(
        ["preset=small", "logger=wandb", "num_threads=1", "trainer.max_steps=20", "data.size=32"], tmp_path
    )
    run(cfg)
    out = capsys.readouterr().out
    assert "images: reconstruction.png, observation.png" in out
    assert "W&B (offline): " in out and "wandb sync " in out
    offline_dir = out.split("wandb sync ")[1].split()[0]
    assert Path(offline_dir).name.startswith("offline-run-") and Path(offline_dir).is_dir()


# -------------------------------------------------------------------------------------- figures


def fake_run(shape: tuple[int, int], observation_shape: tuple[int, int], mfvi: bool) -> dict:
    """What read_run returns, with made-up arrays: the drawing is tested, not the runs."""
    rng = np.random.default_rng(0)
    arrays = {
        "ground_truth": rng.random((1, *shape)),
        "observation": rng.random((1, *observation_shape)),
        "reconstruction": rng.random((1, *shape)),
    }
    if mfvi:
        arrays["variance_total"] = rng.random((1, *shape)) * 1e-3
    metrics = {
        "psnr": 27.5,
        "baseline_psnr": 20.2,
        "steps": 300,
        "criterion": "fixed",
        "reports_detection": False,
    }
    if not mfvi:
        metrics.update(
            criterion="wmv", reports_detection=True, detected_step=120, stopped_early=True, stop_step=220
        )
    curves = {"psnr": list(np.linspace(20, 26, 300)), "psnr_ema": list(np.linspace(19, 27, 300))}
    return {"metrics": metrics, "arrays": arrays, "curves": curves}


def test_figures_are_drawn_as_small_pngs(tmp_path):
    denoising = (fake_run((64, 64), (64, 64), False), fake_run((64, 64), (64, 64), True))
    ct = (fake_run((64, 64), (60, 91), False), fake_run((64, 64), (60, 91), True))
    panel = figures.first_look(denoising, ct, tmp_path / "first_look.png")
    curve = figures.psnr_over_steps(denoising[0], tmp_path / "psnr_over_steps.png")
    for path in (panel, curve):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size < 300_000


def test_figures_jobs_run_dip_with_its_default_stopping_and_mfvi_to_its_budget(tmp_path):
    by_name = {job.name: job for job in figures.jobs(steps=200, mfvi_steps=100, ct_steps=100)}
    assert set(by_name) == {"denoising_dip", "denoising_mfvi", "ct_dip", "ct_mfvi"}
    dip = compose_config(list(by_name["denoising_dip"].overrides), tmp_path)
    mfvi = compose_config(list(by_name["ct_mfvi"].overrides), tmp_path)
    assert dip.stopping.criterion._target_ == WMV and dip.trainer.max_steps == 200
    assert mfvi.stopping.criterion._target_ == FIXED and mfvi.trainer.max_steps == 100


def test_figures_refuse_a_bad_step_count(capsys):
    with pytest.raises(SystemExit):
        figures.main(["--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_read_run_reads_what_a_run_writes(tmp_path):
    np.save(tmp_path / "reconstruction.npy", np.zeros((1, 8, 8)))
    (tmp_path / "metrics.json").write_text(json.dumps({"psnr": 1.0}))
    result = figures.read_run(tmp_path)
    assert result["metrics"] == {"psnr": 1.0} and set(result["arrays"]) == {"reconstruction"}
    assert result["curves"] == {}
