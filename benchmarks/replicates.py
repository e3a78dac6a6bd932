"""Replicated runs: K networks as one batched computation against K runs one after another.

For each method and K, the platform's job with ``method.replicates=K`` is timed (ms per step, as
in ``step_speed.py``), interleaved with K=1, ``--repeats`` times; "sequential" is K times the K=1
step, what K separate runs of the same length cost. Goals: on a CPU the batched run is not slower
than the sequential ones; on a GPU, K=8 at 256x256 takes less than twice the time of K=1.

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

from benchmarks.harness import RESULTS, interleaved, markdown, median, platform_measure, write_csv  # noqa: E402
from dip_lightning.run import quiet_third_party_logs  # noqa: E402

COLUMNS = (
    "method",
    "size",
    "replicates",
    "ms_per_step",
    "ms_per_replicate",
    "sequential_ms",
    "speedup",
    "vs_single",
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


def job(args: argparse.Namespace, method: str, replicates: int) -> list[str]:
    model = args.model or ("skip" if args.device == "cuda" else "skip_light")
    overrides = [f"method={method}", f"model={model}", f"data.size={args.size}"]
    overrides += [f"method.replicates={replicates}"]
    overrides.append("trainer=gpu" if args.device == "cuda" else f"num_threads={args.threads}")
    if args.logger:
        overrides.append(f"logger={args.logger}")
    return overrides


def method_rows(args: argparse.Namespace, method: str) -> list[dict[str, Any]]:
    counts = sorted({1, *args.replicates})
    runs = interleaved(
        {k: (lambda k=k: platform_measure(job(args, method, k), args.steps, args.warmup)) for k in counts},
        args.repeats,
    )
    single = median([m.ms_per_step for m in runs[1]])
    rows = []
    for k in counts:
        ms = median([m.ms_per_step for m in runs[k]])
        rows.append(
            {
                "method": method,
                "size": args.size,
                "replicates": k,
                "ms_per_step": ms,
                "ms_per_replicate": ms / k,
                "sequential_ms": k * single,
                "speedup": k * single / ms,
                "vs_single": ms / single,
                "peak_mib": median([m.peak_mib for m in runs[k]]),
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
        f"{args.threads} thread(s), median of {args.repeats} interleaved runs\n"
    )
    print(markdown(rows, COLUMNS) + "\n")
    for line in goal_lines(rows, args.device):
        print(line)
    path = write_csv(rows, COLUMNS, args.out or RESULTS / f"replicates_{args.device}.csv")
    print(f"written: {path}")
    return rows


if __name__ == "__main__":
    main()
