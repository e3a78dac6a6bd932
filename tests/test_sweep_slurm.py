"""A search through ``hydra/launcher=slurm`` on a real one-node Slurm cluster started by the test.

Debian's slurmctld, slurmd and munge run on 127.0.0.1 from a configuration in a temporary
directory (no cgroups, no accounting database: submitit falls back from ``sacct`` to the job's
files); each trial is a Slurm job. Skipped, with the reason, without root or the programs
(``.ci/run`` installs them) or without the ``slurm`` extra.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from dip_lightning.sweeps.storage import open_storage
from tests.conftest import cli_env
from tests.servers import prior_sweep_command, slurm_cluster

pytestmark = pytest.mark.heavy


def test_search_runs_its_trials_as_slurm_jobs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    import optuna

    start = time.monotonic()
    with slurm_cluster(cpus=2) as slurm_env:
        args = prior_sweep_command(
            "trainer.max_steps=5",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=debug",
            "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=null",
            "hydra.launcher.timeout_min=10",
        )
        result = subprocess.run(
            args,
            cwd=tmp_path,
            env={**cli_env(tmp_path), **slurm_env},
            capture_output=True,
            text=True,
            timeout=600,
        )
    wall = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    sweep_dir = tmp_path / "outputs" / "sweeps" / "mfvi_prior-denoising-camera-small"
    study = optuna.load_study(
        study_name=sweep_dir.name, storage=open_storage(str(sweep_dir / "optuna.journal"))
    )
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 2
    for trial in study.get_trials():
        metrics = json.loads((sweep_dir / str(trial.number) / "metrics.json").read_text())
        assert metrics["status"] == "completed" and trial.value == pytest.approx(metrics["psnr"])
    # Each trial ran as a Slurm job: submitit's per-job logs carry the Slurm job id.
    logs = list(sweep_dir.glob(".submitit/*/*_log.out"))
    assert len(logs) == 2, sorted(p.name for p in sweep_dir.rglob("*") if ".submitit" in str(p))[:20]
    print(f"one-node Slurm + 2-trial search: {wall:.1f} s")
