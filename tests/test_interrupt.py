"""Ctrl-C and SIGTERM: the command line stops at a step boundary, keeps everything and says so."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dip_lightning.config import compose_config
from dip_lightning.job import interrupt
from dip_lightning.job.run import run
from tests.conftest import ROOT, cli_env
from tests.wandb_records import record_types

START_TIMEOUT_S = 120


def default_sigint() -> None:
    """A background shell starts its children with SIGINT ignored; a user's terminal does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(pattern: str, root: Path, process: subprocess.Popen, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        if process.poll() is not None:
            raise AssertionError(f"launch.py ended early:\n{process.communicate()[1][-3000:]}")
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"no {pattern} after {timeout} s")


@pytest.mark.heavy
@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_signal_stops_the_command_line_run_and_keeps_everything(tmp_path, signum, status):
    args = ["preset=small", "trainer.max_steps=100000", "checkpoint.every_n_steps=3"]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    checkpoint = wait_for("outputs/runs/*/*/*/checkpoints/last.ckpt", tmp_path, process, START_TIMEOUT_S)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr and f"exit status {status}" in stderr
    run_dir = checkpoint.parent.parent
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and signal.Signals(signum).name in metrics["reason"]
    assert f"step {metrics['steps']}" in metrics["reason"] and "ckpt_path=" in metrics["reason"]
    assert metrics["checkpoint_step"] == metrics["steps"] >= 3
    assert np.isfinite(np.load(run_dir / "reconstruction.npy")).all() and np.isfinite(metrics["psnr"])
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == metrics["steps"]
    assert "interrupted" in stdout
    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    types = record_types(wandb_file)
    assert types[-1] == "exit" and "history" in types  # the W&B run was finished, not cut off


def test_second_signal_stops_at_once_keeping_results_and_the_last_checkpoint(tmp_path, signal_handlers):
    twice = "+callbacks.signal={_target_:tests.interrupting.SignalAt,step:7,times:2}"
    cfg = compose_config(
        ["preset=small", "logger=none", "trainer.max_steps=40", "checkpoint.every_n_steps=5", twice], tmp_path
    )
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["steps"] == 7
    # The second signal landed inside step 7's hooks: the checkpoint stays at the last boundary.
    assert metrics["checkpoint_step"] == 5
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    assert np.isfinite(np.load(tmp_path / "reconstruction.npy")).all()


def test_run_handles_signals_itself_and_restores_the_handlers_after(tmp_path):
    # As under a launcher other than launch.py (joblib, Ray, submitit) or in a notebook.
    before = signal.getsignal(signal.SIGTERM)
    signal_at = "+callbacks.signal={_target_:tests.interrupting.SignalAt,step:3}"
    cfg = compose_config(["preset=small", "logger=none", "trainer.max_steps=40", signal_at], tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert signal.getsignal(signal.SIGTERM) is before
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["steps"] == metrics["checkpoint_step"] == 3
    interrupt.reset()


def test_handler_phases_and_exit_status(signal_handlers):
    with pytest.raises(KeyboardInterrupt):
        interrupt.handle_signal(signal.SIGTERM, None)  # set-up: stop at once
    assert interrupt.exit_status() == 143 and "SIGTERM" in interrupt.describe()
    interrupt.reset()
    with interrupt.phase(interrupt.Phase.STEP_BOUNDARY):
        interrupt.handle_signal(signal.SIGINT, None)  # recorded: training stops after this step
        assert interrupt.requested() and interrupt.exit_status() == 130
        with pytest.raises(KeyboardInterrupt):
            interrupt.handle_signal(signal.SIGINT, None)  # again: stop now
    interrupt.reset()
    with interrupt.phase(interrupt.Phase.DEFERRED):
        for _ in range(interrupt.FORCE_AFTER - 1):
            interrupt.handle_signal(signal.SIGTERM, None)  # results are being written: wait
    assert interrupt.STATE.phase is interrupt.Phase.IMMEDIATE and interrupt.requested()
