"""Two trials at once with the joblib launcher against the same two trials one after the other.

Both runs are the real command line (`python launch.py -m seed=1,2 ...`, small preset), pinned
to the same CPU cores. In sequence each trial may use every core (``--sequential-threads``, 2 by
default); in parallel each of the two trials gets one torch thread (``num_threads=1``), which is
what ``hydra/launcher=joblib`` needs to avoid oversubscription. Prints the wall time of each
command, the summed training time of its trials (metrics.json ``seconds``) and the ratio.

    python benchmarks/sweep_parallel.py [--steps 300] [--cores 0,1] [--sequential-threads 2]

On a machine shared with other work the ratios move with the load; compare them only between
runs made under the same conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_sweep(extra: list[str], steps: int, workdir: Path) -> tuple[float, list[float]]:
    """Wall time of one `launch.py -m seed=1,2` command, and the training seconds of its trials."""
    args = [
        sys.executable,
        str(ROOT / "launch.py"),
        "-m",
        "seed=1,2",
        "preset=small",
        "logger=none",
        f"trainer.max_steps={steps}",
        "trainer.check_val_every_n_epoch=100000",
        *extra,
    ]
    env = {**os.environ, "DIP_LIGHTNING_ROOT": str(workdir), "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    start = time.perf_counter()
    result = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"command failed ({' '.join(args[2:])}):\n{result.stderr[-3000:]}")
    trials = sorted(workdir.glob("outputs/multiruns/*/*/metrics.json"))
    if len(trials) != 2:
        raise SystemExit(f"expected 2 trials under {workdir}, found {len(trials)}")
    return wall, [float(json.loads(p.read_text())["seconds"]) for p in trials]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per trial")
    parser.add_argument("--cores", default="0,1", help="CPU cores to pin both runs to (comma-separated)")
    parser.add_argument("--sequential-threads", type=int, default=2, help="torch threads per trial in sequence")
    args = parser.parse_args()
    cores = {int(c) for c in args.cores.split(",")}
    os.sched_setaffinity(0, cores)  # inherited by the launched processes and joblib's workers
    print(f"2 trials, small preset, {args.steps} steps each, pinned to cores {sorted(cores)}")
    with tempfile.TemporaryDirectory() as sequential_dir, tempfile.TemporaryDirectory() as parallel_dir:
        sequential = run_sweep([f"num_threads={args.sequential_threads}"], args.steps, Path(sequential_dir))
        parallel = run_sweep(
            ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "num_threads=1"], args.steps, Path(parallel_dir)
        )
    rows = [
        (f"sequence (basic launcher, {args.sequential_threads} threads/trial)", *sequential),
        ("parallel (joblib n_jobs=2, 1 thread/trial)", *parallel),
    ]
    print(f"{'':48s} {'wall s':>8s} {'training s (trial 1 + trial 2)':>32s}")
    for name, wall, seconds in rows:
        print(f"{name:48s} {wall:8.1f} {sum(seconds):12.1f} ({seconds[0]:.1f} + {seconds[1]:.1f})")
    print(f"wall-time ratio sequence / parallel: {sequential[0] / parallel[0]:.2f}x")


if __name__ == "__main__":
    main()
