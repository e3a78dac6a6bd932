"""Two trials at once with the joblib launcher against the same two trials one after the other.

All runs are the real command line (`python launch.py -m seed=1,2 ...`, small preset), pinned
to the same CPU cores. The sequential runs give each trial 1 and then 2 torch threads
(``--sequential-threads``); in parallel each of the two trials gets one thread
(``num_threads=1``), which ``hydra/launcher=joblib`` needs to avoid oversubscription. Prints the
wall time of each command (start-up included), the training time of its trials (metrics.json
``seconds``) and the wall-time ratios.

    python benchmarks/sweep_parallel.py [--steps 2000] [--cores 0,1] [--sequential-threads 1,2]

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
    env = {
        **os.environ,
        "DIP_LIGHTNING_ROOT": str(workdir),
        "WANDB_MODE": "disabled",
        "HYDRA_FULL_ERROR": "1",
    }
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
    parser.add_argument(
        "--steps", type=int, default=2000, help="training steps per trial (short trials measure start-up)"
    )
    parser.add_argument("--cores", default="0,1", help="CPU cores to pin both runs to (comma-separated)")
    parser.add_argument(
        "--sequential-threads",
        default="1,2",
        help="torch threads per trial of the sequential runs (comma-separated: one run each)",
    )
    args = parser.parse_args()
    cores = {int(c) for c in args.cores.split(",")}
    os.sched_setaffinity(0, cores)  # inherited by the launched processes and joblib's workers
    print(f"2 trials, small preset, {args.steps} steps each, pinned to cores {sorted(cores)}")
    rows = []
    for threads in (int(t) for t in args.sequential_threads.split(",")):
        with tempfile.TemporaryDirectory() as workdir:
            name = f"sequence (basic launcher, {threads} thread(s)/trial)"
            rows.append((name, *run_sweep([f"num_threads={threads}"], args.steps, Path(workdir))))
    with tempfile.TemporaryDirectory() as workdir:
        joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "num_threads=1"]
        parallel = (
            "parallel (joblib n_jobs=2, 1 thread/trial)",
            *run_sweep(joblib, args.steps, Path(workdir)),
        )
    print(f"{'':48s} {'wall s':>8s} {'training s (trial 1 + trial 2)':>32s}")
    for name, wall, seconds in [*rows, parallel]:
        print(f"{name:48s} {wall:8.1f} {sum(seconds):12.1f} ({seconds[0]:.1f} + {seconds[1]:.1f})")
    for name, wall, _ in rows:
        print(f"wall-time ratio {name} / parallel: {wall / parallel[1]:.2f}x")


if __name__ == "__main__":
    main()
