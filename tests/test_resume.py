"""Checkpoints and resuming: a stopped run continues exactly where it stopped, on CPU."""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from dip_lightning import rng
from dip_lightning.config import compose_config
from dip_lightning.errors import ConfigError, OutputWriteError
from dip_lightning.job.run import run
from dip_lightning.methods import resume_state

# Runs to the step budget unless a case names a stopping rule (plain DIP stops early by default).
BASE = ("preset=small", "logger=none", "trainer.check_val_every_n_epoch=6", "stopping=fixed")
RESUME_CASES = {
    # WMV with a short window and patience: its window, minimum and patience state must carry over.
    "dip": ("method=dip", "stopping=wmv", "stopping.criterion.window=4", "stopping.criterion.check_every=2"),
    # SGLD: Langevin noise stream and the running moments of the samples.
    "sgld": ("method=sgld", "method.burn_in=4", "method.sample_every=2"),
}


def job(root: Path, name: str, *overrides: str) -> tuple[Path, dict]:
    """Run a job into ``root/name``; return its directory and metrics (if it wrote them)."""
    directory = root / name
    run(compose_config([*BASE, *overrides], directory))
    return directory, json.loads((directory / "metrics.json").read_text())


def read_metrics(directory: Path) -> dict:
    return json.loads((directory / "metrics.json").read_text())


def assert_same_results(first: Path, second: Path) -> None:
    """Every number of metrics.json, the curves and the reconstruction, to 1e-5 relative."""
    a, b = read_metrics(first), read_metrics(second)
    compared = 0
    for key, value in a.items():
        if key == "seconds" or not isinstance(value, float):
            continue
        assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        compared += 1
    assert compared >= 8
    curves_a = json.loads((first / "curves.json").read_text())
    curves_b = json.loads((second / "curves.json").read_text())
    for name in ("psnr", "psnr_ema"):
        assert curves_b[name] == pytest.approx(curves_a[name], rel=1e-5)
    assert curves_b["validation"]["step"] == curves_a["validation"]["step"]
    assert curves_b["validation"]["psnr"] == pytest.approx(curves_a["validation"]["psnr"], rel=1e-5)
    np.testing.assert_allclose(
        np.load(first / "reconstruction.npy"), np.load(second / "reconstruction.npy"), rtol=1e-5, atol=1e-7
    )


@pytest.mark.long
@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_run_stopped_by_a_signal_resumes_to_the_uninterrupted_result(tmp_path, signal_handlers, case):
    overrides = RESUME_CASES[case]
    full, full_metrics = job(tmp_path, "full", *overrides, "trainer.max_steps=24")
    assert full_metrics["status"] == "completed" and full_metrics["steps"] == 24

    stopped = tmp_path / "stopped"
    signal_at = "+callbacks.signal={_target_:tests.interrupting.SignalAt,step:9}"
    with pytest.raises(KeyboardInterrupt):
        run(compose_config([*BASE, *overrides, "trainer.max_steps=24", signal_at], stopped))
    metrics = read_metrics(stopped)
    assert metrics["status"] == "interrupted" and metrics["steps"] == 9
    assert "SIGTERM" in metrics["reason"] and "step 9" in metrics["reason"]
    assert metrics["checkpoint_step"] == 9 and f"ckpt_path={stopped}" in metrics["reason"]
    assert np.isfinite(np.load(stopped / "reconstruction.npy")).all()

    resumed, resumed_metrics = job(
        tmp_path, "resumed", *overrides, "trainer.max_steps=24", f"ckpt_path={stopped}"
    )
    assert resumed_metrics["status"] == "completed" and resumed_metrics["steps"] == 24
    assert resumed_metrics["resumed_from"] == str(stopped / "checkpoints" / "last.ckpt")
    assert_same_results(full, resumed)


@pytest.mark.long
def test_a_finished_run_continues_to_more_steps(tmp_path):
    full, _ = job(tmp_path, "full", "method=mcdropout", "trainer.max_steps=16")
    half, _ = job(tmp_path, "half", "method=mcdropout", "trainer.max_steps=8")
    checkpoint = half / "checkpoints" / "last.ckpt"
    resumed, _ = job(
        tmp_path, "resumed", "method=mcdropout", "trainer.max_steps=16", f"ckpt_path={checkpoint}"
    )
    assert_same_results(full, resumed)


def test_resuming_with_another_learning_rate_says_it_is_not_applied(tmp_path, caplog):
    run_dir, _ = job(tmp_path, "first", "trainer.max_steps=2")
    with caplog.at_level(logging.WARNING, logger="dip_lightning.job.checkpointing"):
        job(tmp_path, "second", "trainer.max_steps=3", "method.optimizer.lr=0.05", f"ckpt_path={run_dir}")
    assert "keeps its saved learning rate 0.01; method.optimizer.lr=0.05 is not applied" in caplog.text


@pytest.mark.long
def test_a_cosine_run_resumes_only_on_its_own_step_budget(tmp_path, signal_handlers):
    cosine = ("method.lr_schedule=cosine",)
    stopped = tmp_path / "stopped"
    signal_at = "+callbacks.signal={_target_:tests.interrupting.SignalAt,step:4}"
    with pytest.raises(KeyboardInterrupt):
        run(compose_config([*BASE, *cosine, "trainer.max_steps=8", signal_at], stopped))
    with pytest.raises(ConfigError, match=r"trainer\.max_steps") as refused:
        job(tmp_path, "longer", *cosine, "trainer.max_steps=12", f"ckpt_path={stopped}")
    assert "resume with trainer.max_steps=8" in str(refused.value)
    assert not (tmp_path / "longer" / "metrics.json").exists()
    full, _ = job(tmp_path, "full", *cosine, "trainer.max_steps=8")
    resumed, _ = job(tmp_path, "resumed", *cosine, "trainer.max_steps=8", f"ckpt_path={stopped}")
    assert_same_results(full, resumed)


@pytest.mark.long
def test_checkpoints_are_periodic_complete_and_load_with_weights_only(tmp_path):
    directory, metrics = job(
        tmp_path,
        "run",
        "method=sgld",
        "method.burn_in=4",
        "method.sample_every=2",
        "trainer.max_steps=12",
        "checkpoint.every_n_steps=5",
        "checkpoint.save_last=false",
    )
    files = sorted(p.name for p in (directory / "checkpoints").iterdir())
    assert files == ["last.ckpt"]  # no temporary file left behind
    checkpoint = torch.load(directory / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 10 and metrics["checkpoint_step"] == 10
    record = checkpoint[resume_state.KEY]
    assert record["format"] == resume_state.FORMAT
    trajectory = record["trajectory"]
    assert record["method"] == "SGLDDIP" and trajectory["ema"]["steps"] == 10
    assert trajectory["psnr_history"].shape == (10,) and int(trajectory["peak_step"]) >= 0
    assert not any(name.startswith("peak") or name == "best_image" for name in checkpoint["state_dict"])
    assert set(record["rng"]) >= {"torch", "numpy", "python"}
    assert "sgld_generator" in checkpoint and checkpoint["sgld_samples"]["count"] == 3
    assert checkpoint["optimizer_states"] and checkpoint["callbacks"]


def test_no_checkpoint_when_disabled(tmp_path):
    directory, metrics = job(
        tmp_path, "run", "trainer.max_steps=4", "checkpoint.every_n_steps=0", "checkpoint.save_last=false"
    )
    assert not (directory / "checkpoints").exists() and "checkpoint" not in metrics


def test_a_failing_checkpoint_write_does_not_stop_the_run(tmp_path, monkeypatch, caplog):
    def disk_full(self, filepath, weights_only=False, storage_options=None):
        Path(filepath).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", disk_full)
    with caplog.at_level(logging.WARNING, logger="dip_lightning.job.checkpointing"):
        directory, metrics = job(tmp_path, "run", "trainer.max_steps=6", "checkpoint.every_n_steps=2")
    assert metrics["status"] == "completed" and metrics["steps"] == 6 and "checkpoint" not in metrics
    assert "No space left on device" in caplog.text
    assert list((directory / "checkpoints").iterdir()) == []  # the partial file was removed


@pytest.mark.long
def test_results_lost_to_a_full_disk_are_written_from_the_checkpoint(tmp_path, monkeypatch):
    full, _ = job(tmp_path, "full", "trainer.max_steps=6")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("dip_lightning.job.results.save_image", disk_full)
        with pytest.raises(OutputWriteError, match="No space left on device") as info:
            job(tmp_path, "full_disk", "trainer.max_steps=6")
    checkpoint = tmp_path / "full_disk" / "checkpoints" / "last.ckpt"
    assert f"ckpt_path={checkpoint}" in str(info.value) and "step 6" in str(info.value)

    # Same command with ckpt_path: nothing left to train, the results of step 6 are written.
    recovered, metrics = job(tmp_path, "recovered", "trainer.max_steps=6", f"ckpt_path={checkpoint}")
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    assert_same_results(full, recovered)


@pytest.fixture
def finished_run(tmp_path) -> Path:
    directory, _ = job(tmp_path, "finished", "trainer.max_steps=2")
    return directory


def write_old_format(finished: Path, target: Path) -> Path:
    checkpoint = torch.load(finished / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint[resume_state.KEY]["format"] = 1
    torch.save(checkpoint, target)
    return target


def write_truncated(finished: Path, target: Path) -> Path:
    data = (finished / "checkpoints" / "last.ckpt").read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


@pytest.mark.parametrize(
    ("make_path", "overrides", "text"),
    [
        (lambda run_dir, tmp: tmp / "absent", (), "nothing exists"),
        (lambda run_dir, tmp: tmp, (), "holds no checkpoints/last.ckpt"),
        (lambda run_dir, tmp: write_truncated(run_dir, tmp / "cut.ckpt"), (), "cannot be read"),
        (
            lambda run_dir, tmp: (torch.save({"w": torch.ones(2)}, tmp / "w.pt"), tmp / "w.pt")[1],
            (),
            "another kind",
        ),
        (lambda run_dir, tmp: write_old_format(run_dir, tmp / "old.ckpt"), (), "format 1"),
        (lambda run_dir, tmp: run_dir, ("method=sgld",), "holds a DIP run"),
        (lambda run_dir, tmp: run_dir, ("data.size=48",), "another network or image size"),
        (lambda run_dir, tmp: run_dir, ("observation_seed=7",), "another measurement"),
    ],
    ids=[
        "absent",
        "no-checkpoint",
        "truncated",
        "not-a-run",
        "old-format",
        "other-method",
        "other-size",
        "other-data",
    ],
)
def test_bad_ckpt_path_fails_before_training(finished_run, tmp_path, make_path, overrides, text):
    other = tmp_path / "other"
    other.mkdir()
    path = make_path(finished_run, other)
    target = tmp_path / "resumed"
    with pytest.raises(ConfigError, match=text) as info:
        run(compose_config([*BASE, "trainer.max_steps=4", f"ckpt_path={path}", *overrides], target))
    assert info.value.setting == "ckpt_path"
    assert "run directory" in str(info.value) or "settings of the run" in str(info.value)
    assert not (target / "metrics.json").exists()


def test_rng_state_round_trips():
    state = rng.capture()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    rng.restore(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert math.isclose(expected[2], again[2])
