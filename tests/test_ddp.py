"""Data-parallel training on CPU: `python launch.py ... trainer=ddp trainer.devices=2`.

Lightning's ddp strategy starts the second rank by re-running the command with Hydra overrides
that point it at rank zero's run directory. The test checks what a user relies on: one run
directory written by rank zero alone (files, W&B run, summary), ranks seeded differently, and
replicas that end identical because their gradients were averaged.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import compose_config, run_cli

DDP = [
    "trainer=ddp",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "preset=small",
    "trainer.max_steps=6",
    "trainer.check_val_every_n_epoch=3",
    "method.num_samples=3",
    "num_threads=1",
]


@pytest.mark.heavy
@pytest.mark.parametrize("method", ["mfvi", "mcdropout"])
def test_two_process_ddp_on_cpu_writes_once_from_rank_zero(tmp_path, method):
    result = run_cli([f"method={method}", *DDP], tmp_path, timeout=420)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    runs = sorted(p.parent for p in tmp_path.glob("outputs/**/metrics.json"))
    assert len(runs) == 1, runs
    run_dir = runs[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    assert metrics["uce"] >= 0 and (run_dir / "variance_total.png").is_file()
    assert (run_dir / "calibration_ground_truth.png").is_file()

    # Only rank zero finalises, logs to W&B and keeps a Hydra log file.
    assert result.stdout.count("[dip-lightning]") == 1
    (wandb_run,) = run_dir.glob("wandb/offline-run-*")
    (events,) = wandb_run.glob("*.wandb")
    logged = events.read_bytes()
    # Validation curves and the colour-mapped maps and calibration diagram reach W&B.
    for key in ("val/psnr", "val/uce", "final/variance_total", "final/calibration_ground_truth"):
        assert key.encode() in logged, key
    assert not list(run_dir.glob("train_ddp_process_*"))
    assert sorted(p.name for p in run_dir.glob("*.log")) == ["launch.log"]

    # Each rank seeds its own training noise; the averaged gradients keep the replicas equal.
    seeds = dict(re.findall(r"rank (\d) of 2: training noise seeded with (\d+)", output))
    assert seeds == {"0": "0", "1": "1"}
    checksums = dict(re.findall(r"rank (\d) of 2: parameter checksum (\S+)", output))
    assert set(checksums) == {"0", "1"} and checksums["0"] == checksums["1"]


def test_ddp_config_runs_on_any_accelerator(tmp_path):
    cfg = compose_config(["trainer=ddp"], tmp_path)
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy) == ("auto", 2, "ddp")
