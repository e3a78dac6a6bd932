"""A search through ``hydra/launcher=ray_local`` attached to a real Ray head node on 127.0.0.1.

The test starts the head (2 CPUs), runs a 4-trial search whose trials are Ray tasks, two at a
time, and stops the node. Skipped only where Ray is not installed (``pip install -e '.[ray]'``;
``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from dip_lightning.sweeps.storage import open_storage
from tests.conftest import cli_env
from tests.servers import RAY_LOOPBACK_ENV, prior_sweep_command, ray_head

pytestmark = pytest.mark.heavy


def test_search_runs_its_trials_on_a_ray_head_node(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher is not installed")
    import optuna

    start = time.monotonic()
    env = {**cli_env(tmp_path), **RAY_LOOPBACK_ENV}
    with ray_head(num_cpus=2, env=env) as address:
        args = prior_sweep_command(
            "trainer.max_steps=5",
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.n_jobs=2",
            "hydra/launcher=ray_local",
            f"hydra.launcher.ray.init.address={address}",
            "hydra.launcher.ray.remote.num_gpus=0",
            "hydra.launcher.ray.remote.num_cpus=1",
        )
        result = subprocess.run(
            args,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    wall = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"Connecting to existing Ray cluster at address: {address}" in output
    assert output.count("(_run_job pid=") >= 4 and "Ray Launcher is launching 2 jobs" in output
    sweep_dir = tmp_path / "outputs" / "sweeps" / "mfvi_prior-denoising-camera-small"
    study = optuna.load_study(
        study_name=sweep_dir.name, storage=open_storage(str(sweep_dir / "optuna.journal"))
    )
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 4
    for trial in study.get_trials():
        metrics = json.loads((sweep_dir / str(trial.number) / "metrics.json").read_text())
        assert metrics["status"] == "completed" and trial.value == pytest.approx(metrics["psnr"])
    print(f"Ray head node + 4-trial search: {wall:.1f} s")
    assert os.environ.get("RAY_ADDRESS") is None  # the test did not leak the cluster's address
