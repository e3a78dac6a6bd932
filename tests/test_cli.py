"""End-to-end runs of `python launch.py` in a subprocess, as a user types them.

Each test starts the command line (about 10 s of start-up on two cores), so the file is marked
``heavy``: `make test` and CI run it, `make quick` does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import config_options, run_cli

pytestmark = pytest.mark.heavy

SMALL = ["preset=small", "trainer.max_steps=20", "trainer.check_val_every_n_epoch=10"]
RUN_FILES = (
    "reconstruction.png",
    "reconstruction.npy",
    "observation.png",
    "observation.npy",
    "metrics.json",
    "config.yaml",
)


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("outputs/**/metrics.json"))


def assert_complete_run(run_dir: Path) -> dict:
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), f"{name} missing in {run_dir}"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert np.isfinite(metrics["psnr"]) and 0 < metrics["ssim"] <= 1
    return metrics


@pytest.mark.parametrize("task", config_options("task"))
def test_each_task_runs_from_the_command_line(tmp_path, task):
    result = run_cli([f"task={task}", "method=dip", "logger=none", *SMALL], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reconstruction PSNR" in result.stdout and "outputs:" in result.stdout
    (run_dir,) = run_dirs(tmp_path)
    metrics = assert_complete_run(run_dir)
    assert (run_dir / "ground_truth.png").is_file()
    assert metrics["steps"] == 20
    reconstruction = np.load(run_dir / "reconstruction.npy")
    truth = np.load(run_dir / "ground_truth.npy")
    assert reconstruction.shape == truth.shape == (1, 64, 64)


def test_wandb_offline_files_and_user_file(tmp_path):
    rng = np.random.default_rng(0)
    rgb = (rng.random((70, 66, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "mine.png")
    result = run_cli(["data=file", f"data.path={tmp_path / 'mine.png'}", *SMALL], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    assert_complete_run(run_dir)
    assert np.load(run_dir / "reconstruction.npy").shape == (3, 64, 64)
    offline_runs = list(run_dir.glob("wandb/offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb")), "no W&B event file written"


def test_multirun_gives_one_wandb_run_per_job_in_one_group(tmp_path):
    result = run_cli(["-m", "seed=1,2", *SMALL], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 2
    run_ids = set()
    for run_dir in dirs:
        assert_complete_run(run_dir)
        (offline,) = run_dir.glob("wandb/offline-run-*")
        run_ids.add(offline.name.rsplit("-", 1)[-1])
        (event_file,) = offline.glob("*.wandb")
        # The group (the sweep directory's name) is recorded in the run's event file.
        assert dirs[0].parent.name.encode() in event_file.read_bytes()
    assert len(run_ids) == 2


def test_bad_setting_gives_one_paragraph_and_exit_code(tmp_path):
    result = run_cli(["task=super_resolution", "operator.factor=3", "logger=none", *SMALL], tmp_path)
    assert result.returncode == 2
    assert "operator.factor" in result.stderr and "Traceback" not in result.stderr
    assert run_dirs(tmp_path) == []
