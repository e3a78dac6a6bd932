"""Per-step cost of each stopping criterion inside the platform's real training loop, vs ``fixed``.

Every repetition runs the platform's job (``dip_lightning.job.run.run``) once per criterion: plain DIP
denoising, 64x64, ``logger=none``, ``--steps`` steps, with patiences that never end the run (and a
discrepancy target that is never met), so every criterion updates at every step. The
:class:`~dip_lightning.stopping.callback.StoppingCallback` hook is wrapped with a timer, which gives,
for every step after ``--start`` (by then the ES-WMV window of 100 outputs is full, so its eviction
path is timed too):

* the step time: from the end of one step's hook to the end of the next (forward, backward,
  optimiser, the method's bookkeeping, every callback, the criterion);
* the criterion time: the hook itself (on a CPU its tensor work runs inside it).

Each run reports the per-step medians, which a shared machine's slow phases barely move, and the
table gives the median over repetitions. Repetitions are interleaved and the order rotates.

* **overhead vs fixed** = (criterion time - fixed's criterion time) / fixed's step time: the cost a
  criterion adds to a ``fixed`` run (``fixed`` itself copies one image per step), measured inside
  the same runs, so other jobs on the machine cancel out. Goal: under 5 %.
* **step vs fixed** compares whole steps of different runs: the end-to-end view, but noisy on a
  shared machine (a few percent either way).

    python benchmarks/stopping_overhead.py [--model skip_light] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import write_csv  # noqa: E402
from dip_lightning.config import compose_config  # noqa: E402
from dip_lightning.job.run import run  # noqa: E402
from dip_lightning.stopping.callback import StoppingCallback  # noqa: E402

GOAL = 0.05
RESULTS = ROOT / "benchmarks" / "results"
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


class HookTimer:
    """Wraps ``StoppingCallback.on_train_batch_end`` to time each step and the criterion within it."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.step_ms: list[float] = []
        self.criterion_ms: list[float] = []
        self._last_end: float | None = None
        self._original = StoppingCallback.on_train_batch_end

    def reset(self) -> None:
        self.step_ms, self.criterion_ms, self._last_end = [], [], None

    def install(self) -> None:
        original = self._original

        def timed(callback: StoppingCallback, trainer: Any, *args: Any) -> None:
            begin = time.perf_counter()
            original(callback, trainer, *args)
            end = time.perf_counter()
            if trainer.global_step > self.start:  # the output of step global_step - 1 >= start
                self.criterion_ms.append(1000.0 * (end - begin))
                if self._last_end is not None:
                    self.step_ms.append(1000.0 * (end - self._last_end))
            self._last_end = end

        StoppingCallback.on_train_batch_end = timed  # type: ignore[method-assign]

    def uninstall(self) -> None:
        StoppingCallback.on_train_batch_end = self._original  # type: ignore[method-assign]


def time_run(name: str, args: argparse.Namespace, workdir: Path, timer: HookTimer) -> dict[str, float]:
    """Median step and criterion time (ms) of one run with criterion ``name``."""
    output_dir = workdir / name
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
    with open_dict(cfg):
        cfg.callbacks.image_logger = None
    timer.reset()
    run(cfg)
    if len(timer.criterion_ms) != args.steps - args.start:
        raise RuntimeError(f"{name} stopped early or was not timed ({len(timer.criterion_ms)} steps)")
    return {
        "step_ms": statistics.median(timer.step_ms),
        "criterion_ms": statistics.median(timer.criterion_ms),
    }


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
    parser.add_argument(
        "--csv", type=Path, default=None, help="default: results/stopping_overhead_<model>_cpu.csv"
    )
    args = parser.parse_args()
    if not 0 < args.start < args.steps:
        parser.error("--start must lie between 0 and --steps")
    args.csv = args.csv or RESULTS / f"stopping_overhead_{args.model}_cpu.csv"

    logging.getLogger("dip_lightning").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    names = list(CRITERIA)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    timer = HookTimer(args.start)
    timer.install()
    begin = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="stopping_overhead_") as tmp:
            for repeat in range(args.repeats):
                order = names[repeat % len(names) :] + names[: repeat % len(names)]
                for name in order:
                    sample = time_run(name, args, Path(tmp) / str(repeat), timer)
                    samples[name].append(sample)
                    print(
                        f"# repeat {repeat + 1}: {name} step {sample['step_ms']:.2f} ms, "
                        f"criterion {sample['criterion_ms']:.3f} ms",
                        flush=True,
                    )
    finally:
        timer.uninstall()

    def median(name: str, kind: str) -> float:
        return statistics.median(sample[kind] for sample in samples[name])

    fixed_step, fixed_criterion = median("fixed", "step_ms"), median("fixed", "criterion_ms")
    rows = []
    for name in names:
        step, criterion = median(name, "step_ms"), median(name, "criterion_ms")
        rows.append(
            {
                "criterion": name,
                "step_ms": round(step, 3),
                "criterion_ms": round(criterion, 4),
                "overhead_vs_fixed_pct": round(100 * (criterion - fixed_criterion) / fixed_step, 2),
                "step_vs_fixed_pct": round(100 * (step / fixed_step - 1), 2),
                "step_samples_ms": " ".join(f"{s['step_ms']:.2f}" for s in samples[name]),
                "criterion_samples_ms": " ".join(f"{s['criterion_ms']:.3f}" for s in samples[name]),
            }
        )
    write_csv(rows, list(rows[0]), args.csv)

    print()
    print(
        f"DIP denoising {args.size}x{args.size}, model={args.model}, {args.threads} thread(s), "
        f"steps {args.start}..{args.steps - 1} timed, median of {args.repeats} interleaved repeats"
    )
    print()
    print("| criterion | step ms | criterion ms | overhead vs fixed | step vs fixed (end to end) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['criterion']} | {row['step_ms']:.2f} | {row['criterion_ms']:.3f} | "
            f"{row['overhead_vs_fixed_pct']:+.2f} % | {row['step_vs_fixed_pct']:+.1f} % |"
        )
    print()
    worst = max(rows[1:], key=lambda r: r["overhead_vs_fixed_pct"])
    verdict = "within" if worst["overhead_vs_fixed_pct"] < 100 * GOAL else "above"
    print(
        f"largest overhead vs fixed: {worst['criterion']} {worst['overhead_vs_fixed_pct']:+.2f} %, "
        f"{verdict} the {100 * GOAL:.0f} % goal"
    )
    print(f"total {time.perf_counter() - begin:.0f} s; CSV: {args.csv}")


if __name__ == "__main__":
    main()
