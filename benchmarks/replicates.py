"""Replicated runs: K networks as one batched computation against K runs one after another.

For each method and K, the platform's job with ``method.replicates=K`` is timed (ms per step, as
in ``step_speed.py``). ``vs_single`` is its step time over the K=1 step; ``speedup`` is K over
that: how much faster than K separate runs of the same length. On a CPU every run is paired step
by step with the plain loop of one network, and the K runs are compared through their ratios to
that common reference, so the load of a shared machine cancels out; the ms columns are medians as
measured. On a GPU whole runs alternate. Goals: on a CPU the batched run is not slower than the
sequential ones; on a GPU, K=8 at 256x256 takes less than twice the time of K=1.

    python benchmarks/replicates.py                                   # CPU, 64 px, K = 1 and 4
    python benchmarks/replicates.py --device cuda --size 256 --replicates 1 8

Writes ``benchmarks/results/replicates_<device>.csv``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (  # noqa: E402
    RESULTS,
    interleaved,
    markdown,
    median,
    paired_measure,
    platform_measure,
    write_csv,
)
from dip_lightning.job.run import quiet_third_party_logs  # noqa: E402

COLUMNS = (
    "method",
    "size",
    "replicates",
    "ms_per_step",
    "ms_per_replicate",
    "vs_single",
    "speedup",
    "peak_mib",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--methods", nargs="+", choices=("dip", "mfvi"), default=["dip", "mfvi"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--replicates", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="model config (default: skip_light, skip on cuda)")
    parser.add_argument("--logger", default=None, help="logger config (default: the platform's default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="CSV path")
    return parser.parse_args(argv)


def job(args: argparse.Namespace, method: str) -> list[str]:
    """The job's overrides, K aside."""
    model = args.model or ("skip" if args.device == "cuda" else "skip_light")
    overrides = [f"method={method}", f"model={model}", f"data.size={args.size}"]
    overrides.append("trainer=gpu" if args.device == "cuda" else f"num_threads={args.threads}")
    if args.logger:
        overrides.append(f"logger={args.logger}")
    return overrides


def method_rows(args: argparse.Namespace, method: str) -> list[dict[str, Any]]:
    """One row per K. On a CPU each platform run is paired step by step with the plain loop of one
    network (``step_speed.py``), and K runs are compared through their ratios to that shared
    reference, which a shared machine's load cancels out of; on a GPU whole runs alternate."""
    counts = sorted({1, *args.replicates})
    base = job(args, method)
    if args.device == "cpu":
        runs = {k: [] for k in counts}
        for _ in range(args.repeats):
            for k in counts:
                plain, platform = paired_measure(base, [f"method.replicates={k}"], args.steps, args.warmup)
                runs[k].append((platform.ms_per_step / plain.ms_per_step, platform))
    else:
        timed = interleaved(
            {
                k: (lambda k=k: platform_measure(job(args, method, k), args.steps, args.warmup))
                for k in counts
            },
            args.repeats,
        )
        runs = {k: [(m.ms_per_step, m) for m in timed[k]] for k in counts}
    relative = {k: median([r for r, _ in runs[k]]) for k in counts}  # ms, or ms over the plain step
    rows = []
    for k in counts:
        vs_single = relative[k] / relative[1]
        ms = median([m.ms_per_step for _, m in runs[k]])
        rows.append(
            {
                "method": method,
                "size": args.size,
                "replicates": k,
                "ms_per_step": ms,
                "ms_per_replicate": ms / k,
                "vs_single": vs_single,
                "speedup": k / vs_single,
                "peak_mib": median([m.peak_mib for _, m in runs[k]]),
            }
        )
    return rows


def goal_lines(rows: list[dict[str, Any]], device: str) -> list[str]:
    lines = []
    for row in rows:
        k = row["replicates"]
        if k == 1:
            continue
        if device == "cpu":
            verdict = "met" if row["speedup"] >= 1.0 else "NOT met"
            lines.append(
                f"goal: {row['method']} K={k} no slower than {k} sequential runs on cpu: {verdict} "
                f"({row['speedup']:.2f}x faster)"
            )
        elif k == 8 and row["size"] == 256:
            verdict = "met" if row["vs_single"] < 2.0 else "NOT met"
            lines.append(
                f"goal: {row['method']} K=8 at 256 px under 2x K=1 on cuda: {verdict} ({row['vs_single']:.2f}x)"
            )
    return lines


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    quiet_third_party_logs()
    torch.set_num_threads(args.threads)
    rows = [row for method in args.methods for row in method_rows(args, method)]
    print(
        f"\n{args.device}, {args.size}x{args.size}, {args.steps} steps ({args.warmup} warm-up), "
        f"{args.threads} thread(s), median of {args.repeats} runs\n"
    )
    print(markdown(rows, COLUMNS) + "\n")
    for line in goal_lines(rows, args.device):
        print(line)
    path = write_csv(rows, COLUMNS, args.out or RESULTS / f"replicates_{args.device}.csv")
    print(f"written: {path}")
    return rows


if __name__ == "__main__":
    main()
