"""Three sweeper processes share one study on a real PostgreSQL server; one is killed mid-trial.

The server is Debian's PostgreSQL, started on 127.0.0.1 by the test and deleted afterwards. The
killed worker's trial must be failed by the heartbeat, re-queued once and run by a surviving
worker, and the study must end with exactly n_trials complete trials, none run twice. The two
surviving workers start together, so they also race for the same trials.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import cli_env
from tests.servers import postgres_server, prior_sweep_command, wait_for

pytestmark = pytest.mark.heavy

N_TRIALS = 5
STEPS = 40
KILL_AT = 10


def test_three_workers_share_a_postgresql_study_and_survive_a_killed_worker(tmp_path):
    pytest.importorskip(
        "psycopg", reason="the PostgreSQL driver psycopg is not installed (pip install -e '.[dev]')"
    )
    with postgres_server() as url:
        args = prior_sweep_command(
            f"trainer.max_steps={STEPS}",
            f"hydra.sweeper.n_trials={N_TRIALS}",
            f"hydra.sweeper.storage={url}",
            "hydra.sweeper.heartbeat_interval=1",
            "hydra.sweeper.grace_period=4",
            "hydra.sweeper.poll_interval=1",
        )
        # The first worker kills itself (SIGKILL: no clean-up, no last heartbeat) in its first trial.
        kill = f"+callbacks.kill={{_target_:tests.interrupting.SignalAt,step:{KILL_AT},signum:{int(signal.SIGKILL)}}}"
        start = time.monotonic()

        def worker(extra: list[str]) -> subprocess.Popen:
            return subprocess.Popen(
                [*args, *extra],
                cwd=tmp_path,
                env=cli_env(tmp_path),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )

        # The doomed worker starts first and the others once its first trial has begun, so it
        # surely gets a trial to die in, however slowly the processes start on a busy machine.
        workers = [worker([kill])]
        first_trial = tmp_path / "outputs" / "sweeps" / "mfvi_prior-denoising-camera-small" / "0" / ".hydra"
        assert wait_for(lambda: first_trial.exists() or workers[0].poll() is not None, timeout=300)
        workers += [worker([]), worker([])]
        outputs = [worker.communicate(timeout=600)[0] for worker in workers]
        wall = time.monotonic() - start
        codes = [worker.returncode for worker in workers]
        assert codes == [-signal.SIGKILL, 0, 0], "\n\n".join(o[-3000:] for o in outputs)

        study_name = "mfvi_prior-denoising-camera-small"
        study = optuna.load_study(study_name=study_name, storage=url)
        trials = study.get_trials()
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        failed = [t for t in trials if t.state == TrialState.FAIL]
        assert len(complete) == N_TRIALS, [(t.number, t.state.name) for t in trials]
        # The killed trial: failed by the heartbeat, re-queued once with the same parameters.
        (stale,) = [t for t in failed if not t.user_attrs.get("surplus")]
        (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == stale.number]
        assert retry.state == TrialState.COMPLETE and retry.params == stale.params
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        # No trial ran twice: every complete trial was run by exactly one surviving worker.
        ran = [int(n) for output in outputs[1:] for n in re.findall(r"Trial (\d+) completed", output)]
        assert sorted(ran) == sorted(t.number for t in complete)
        sweep_dir = tmp_path / "outputs" / "sweeps" / study_name
        for trial in complete:
            metrics = json.loads((sweep_dir / str(trial.number) / "metrics.json").read_text())
            assert metrics["status"] == "completed" and metrics["steps"] == STEPS
            assert trial.value == pytest.approx(metrics["psnr"])
        print(f"3 workers, {N_TRIALS} trials, one worker killed: {wall:.1f} s")
