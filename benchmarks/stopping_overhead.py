"""Per-step cost of each stopping criterion inside the platform's real training loop, vs ``fixed``.

Every repetition runs the platform's job (``dip_lightning.run.run``) once per criterion: plain DIP
denoising, 64x64, ``logger=none``, ``--steps`` steps, with patiences that never end the run (and a
discrepancy target that is never met), so every criterion updates at every step. A small
callback times the steps after ``--start`` (by then the ES-WMV window of 100 outputs is full, so
its eviction path is timed too). Repetitions are interleaved and the criterion order rotates, so
slow phases of a shared machine hit every criterion alike. The table gives the median over
repetitions of the process CPU time per step (what a criterion costs; other jobs on a shared
machine stretch the wall time but not this) and of the wall time, and the overhead of each
against ``fixed`` (which itself copies one image per step). Goal: under 5 %.

    python benchmarks/stopping_overhead.py [--model skip_light] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dip_lightning.config import compose_config  # noqa: E402
from dip_lightning.run import run  # noqa: E402

GOAL = 0.05
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "stopping_overhead_cpu.csv"
NEVER = 10**9
# Overrides per criterion: defaults otherwise (W=100, alpha=0.1, tau=1.1, check_every=10).
CRITERIA: dict[str, list[str]] = {
    "fixed": ["stopping=fixed"],
    "wmv": ["stopping=wmv", f"stopping.criterion.patience={NEVER}"],
    "emv": ["stopping=emv", f"stopping.criterion.patience={NEVER}"],
    # A noise level so small that the misfit never reaches it: the run goes on.
    "discrepancy": ["stopping=discrepancy", "stopping.criterion.noise_std=1e-9"],
    "oracle": ["stopping=oracle"],
}


class StepTimer(pl.Callback):
    """Wall and process CPU time of the training steps after ``start`` (optimiser step + callbacks).

    The CPU time of this process is what the criterion really costs on a shared machine: other
    jobs stretch the wall time, not the CPU time of this one.
    """

    def __init__(self, path: str, start: int) -> None:
        self.path = Path(path)
        self.start = int(start)
        self._begin: tuple[float, float] | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.start:
            self._begin = (time.perf_counter(), time.process_time())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._begin is None:
            raise RuntimeError(f"the run ended before step {self.start}; raise --steps")
        steps = trainer.global_step - self.start
        wall = time.perf_counter() - self._begin[0]
        cpu = time.process_time() - self._begin[1]
        result = {"steps": steps, "wall_ms": 1000.0 * wall / steps, "cpu_ms": 1000.0 * cpu / steps}
        self.path.write_text(json.dumps(result))


def time_run(name: str, args: argparse.Namespace, workdir: Path, repeat: int) -> dict[str, float]:
    """CPU and wall ms/step of one run with criterion ``name``."""
    output_dir = workdir / f"{name}_{repeat}"
    overrides = [
        "preset=cpu",
        "task=denoising",
        "method=dip",
        "logger=none",
        f"model={args.model}",
        f"data.size={args.size}",
        f"trainer.max_steps={args.steps}",
        f"trainer.check_val_every_n_epoch={args.steps + 1}",  # no evaluation inside the timing
        f"num_threads={args.threads}",
        *CRITERIA[name],
    ]
    cfg = compose_config(overrides, output_dir)
    timing = output_dir / "step_timing.json"
    with open_dict(cfg):
        cfg.callbacks.image_logger = None
        cfg.callbacks.step_timer = {
            "_target_": "benchmarks.stopping_overhead.StepTimer",
            "path": str(timing),
            "start": args.start,
        }
    output_dir.mkdir(parents=True, exist_ok=True)
    run(cfg)
    metrics = json.loads((output_dir / "metrics.json").read_text())
    if metrics["steps"] != args.steps:
        raise RuntimeError(f"{name} stopped at step {metrics['steps']}; the timing needs full runs")
    return json.loads(timing.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="skip_light", help="skip_light (the CPU preset's) or skip_tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--start", type=int, default=100, help="time the steps after this one")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    args = parser.parse_args()
    if not 0 < args.start < args.steps:
        parser.error("--start must lie between 0 and --steps")

    logging.getLogger("dip_lightning").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    names = list(CRITERIA)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stopping_overhead_") as tmp:
        for repeat in range(args.repeats):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in order:
                sample = time_run(name, args, Path(tmp), repeat)
                samples[name].append(sample)
                print(
                    f"# repeat {repeat + 1}: {name} {sample['cpu_ms']:.2f} ms CPU, {sample['wall_ms']:.2f} ms wall",
                    flush=True,
                )

    def median(name: str, kind: str) -> float:
        return statistics.median(sample[kind] for sample in samples[name])

    rows = []
    for name in names:
        rows.append(
            {
                "criterion": name,
                "cpu_ms_per_step": round(median(name, "cpu_ms"), 3),
                "cpu_overhead_pct": round(100 * (median(name, "cpu_ms") / median("fixed", "cpu_ms") - 1), 2),
                "wall_ms_per_step": round(median(name, "wall_ms"), 3),
                "wall_overhead_pct": round(
                    100 * (median(name, "wall_ms") / median("fixed", "wall_ms") - 1), 2
                ),
                "cpu_samples_ms": " ".join(f"{s['cpu_ms']:.2f}" for s in samples[name]),
                "wall_samples_ms": " ".join(f"{s['wall_ms']:.2f}" for s in samples[name]),
            }
        )
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    print()
    print(
        f"DIP denoising {args.size}x{args.size}, model={args.model}, {args.threads} thread(s), "
        f"steps {args.start}..{args.steps} timed, median of {args.repeats} interleaved repeats"
    )
    print()
    print("| criterion | CPU ms/step | vs fixed | wall ms/step | vs fixed |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['criterion']} | {row['cpu_ms_per_step']:.2f} | {row['cpu_overhead_pct']:+.1f} % | "
            f"{row['wall_ms_per_step']:.2f} | {row['wall_overhead_pct']:+.1f} % |"
        )
    print()
    worst = max(rows[1:], key=lambda r: r["cpu_overhead_pct"])
    verdict = "within" if worst["cpu_overhead_pct"] < 100 * GOAL else "above"
    print(
        f"largest CPU-time overhead: {worst['criterion']} {worst['cpu_overhead_pct']:+.1f} %, "
        f"{verdict} the {100 * GOAL:.0f} % goal"
    )
    print(f"total {time.perf_counter() - begin:.0f} s; CSV: {args.csv}")


if __name__ == "__main__":
    main()
