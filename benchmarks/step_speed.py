"""Milliseconds per training step and peak memory of every method and task, platform vs plain loop.

For each method (dip, sgld, mcdropout, mfvi), task (denoising, super_resolution, inpainting),
image size and variant, the platform's real job (default loggers, callbacks and logging interval)
and a plain PyTorch loop doing the same math (``reference_loops.py``) are timed in the same
process. On a CPU they are paired step by step: inside the platform's run, one plain step runs at
every boundary between two platform steps and is timed apart, so both loops meet the same load of
a shared machine. On a GPU (``--pairing runs``) whole runs alternate instead, since timing every
step would need a device sync per step. The table gives medians over ``--repeats`` runs, the
ratio, the peak memory of the steps, the FLOPs of one step (``FlopCounterMode`` over forward and
backward) and the fraction of the device's peak that the platform achieves. The peak defaults to
the best dense matmul throughput measured at start-up with the same threads and dtype
(``--peak-gflops`` overrides). The PSNR columns are the bias-corrected output EMA after the timed
steps: both loops train the same network from the same seed with their own random streams, so
they agree, and a variant that hurts quality shows.

Variants: ``fp32`` (default), ``bf16`` (``trainer.precision=bf16-mixed``), ``channels_last``
(``model.channels_last=true``) and ``compile`` (``model.compile=true``); the plain loop gets the
same switch. Larger images get fewer steps (``--steps`` sets one count for all sizes).

    python benchmarks/step_speed.py                                  # CPU, 64/128/256, ~10 min
    python benchmarks/step_speed.py --sizes 64 --methods dip --repeats 5
    python benchmarks/step_speed.py --device cuda --variants fp32 bf16 channels_last compile

Writes ``benchmarks/results/step_speed_<device>.csv``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (  # noqa: E402
    RESULTS,
    flops_per_step,
    interleaved,
    markdown,
    measured_peak_gflops,
    median,
    paired_measure,
    platform_measure,
    reference_measure,
    write_csv,
)
from benchmarks.reference_loops import VARIANTS  # noqa: E402
from dip_lightning.job.run import quiet_third_party_logs  # noqa: E402

METHODS = ("dip", "sgld", "mcdropout", "mfvi")
TASKS = ("denoising", "super_resolution", "inpainting")
VARIANT_OVERRIDES: dict[str, list[str]] = {
    "fp32": [],
    "bf16": ["trainer.precision=bf16-mixed"],
    "channels_last": ["model.channels_last=true"],
    "compile": ["model.compile=true"],
}
GOALS = {"cpu": (64, 1.10), "cuda": (256, 1.05)}
"""Per device: the image size at which the platform / plain ratio is held to the bound."""
COLUMNS = (
    "method",
    "task",
    "size",
    "variant",
    "steps",
    "plain_ms",
    "platform_ms",
    "ratio",
    "plain_mib",
    "platform_mib",
    "gflop_per_step",
    "peak_fraction",
    "plain_psnr",
    "platform_psnr",
)


def default_steps(size: int) -> tuple[int, int]:
    """Steps per run and untimed warm-up steps for a size: 30 at 64 px, fewer at larger sizes."""
    steps = max(6, round(30 * (64 / size) ** 2))
    return steps, max(2, steps // 5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["fp32"])
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: by size)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default: by size)")
    parser.add_argument("--repeats", type=int, default=2, help="runs at sizes up to 64 (median)")
    parser.add_argument(
        "--large-repeats", type=int, default=1, help="runs above 64 px (longer, steadier steps)"
    )
    parser.add_argument("--model", default=None, help="model config (default: skip_light, skip on cuda)")
    parser.add_argument("--logger", default=None, help="logger config (default: the platform's default)")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)"
    )
    parser.add_argument("--peak-gflops", type=float, default=None, help="device peak (default: measured)")
    parser.add_argument(
        "--pairing",
        choices=("steps", "runs"),
        default=None,
        help="steps: the plain loop steps between the platform's steps in one run (default on cpu); "
        "runs: alternate whole runs (default on cuda, where per-step syncs would distort)",
    )
    parser.add_argument("--out", type=Path, default=None, help="CSV path")
    return parser.parse_args(argv)


def pairing(args: argparse.Namespace) -> str:
    """How the two loops share the machine: step by step in one run (CPU) or in alternate runs."""
    return args.pairing or ("runs" if args.device == "cuda" else "steps")


def job_overrides(args: argparse.Namespace, method: str, task: str, size: int) -> list[str]:
    model = args.model or ("skip" if args.device == "cuda" else "skip_light")
    overrides = [f"method={method}", f"task={task}", f"model={model}", f"data.size={size}"]
    overrides.append("trainer=gpu" if args.device == "cuda" else f"num_threads={args.threads}")
    if args.logger:
        overrides.append(f"logger={args.logger}")
    return overrides


def measure_row(
    args: argparse.Namespace, method: str, task: str, size: int, variant: str, peaks: dict[str, float]
) -> dict[str, Any]:
    device = torch.device(args.device)
    steps, warmup = default_steps(size)
    if args.steps:
        steps, warmup = args.steps, max(1, args.steps // 5)
    if args.warmup is not None:
        warmup = args.warmup
    base = job_overrides(args, method, task, size)
    repeats = args.repeats if size <= 64 else args.large_repeats
    if pairing(args) == "steps":
        pairs = [
            paired_measure(base, VARIANT_OVERRIDES[variant], steps, warmup, variant) for _ in range(repeats)
        ]
        runs = {"plain": [p[0] for p in pairs], "platform": [p[1] for p in pairs]}
    else:
        runs = interleaved(
            {
                "plain": lambda: reference_measure(base, steps, warmup, device, variant),
                "platform": lambda: platform_measure([*base, *VARIANT_OVERRIDES[variant]], steps, warmup),
            },
            repeats,
        )
    plain_ms = median([m.ms_per_step for m in runs["plain"]])
    platform_ms = median([m.ms_per_step for m in runs["platform"]])
    flops = runs["plain"][0].flops
    if math.isnan(flops):
        flops = flops_per_step(base, device)
    peak = peaks.get(variant, peaks["fp32"])
    return {
        "method": method,
        "task": task,
        "size": size,
        "variant": variant,
        "steps": steps,
        "plain_ms": plain_ms,
        "platform_ms": platform_ms,
        "ratio": platform_ms / plain_ms,
        "plain_mib": median([m.peak_mib for m in runs["plain"]]),
        "platform_mib": median([m.peak_mib for m in runs["platform"]]),
        "gflop_per_step": flops / 1e9,
        "peak_fraction": flops / (platform_ms / 1000.0) / (peak * 1e9),
        "plain_psnr": median([m.psnr for m in runs["plain"]]),
        "platform_psnr": median([m.psnr for m in runs["platform"]]),
    }


def goal_lines(rows: list[dict[str, Any]], device: str) -> list[str]:
    size, bound = GOALS[device]
    held = [r for r in rows if r["size"] == size]
    if not held:
        return []
    worst = max(held, key=lambda r: r["ratio"])
    verdict = "met" if worst["ratio"] <= bound else "NOT met"
    return [
        f"goal: platform / plain <= {bound:.2f} at {size}x{size} on {device}: {verdict} "
        f"(worst {worst['ratio']:.3f}: {worst['method']}, {worst['task']}, {worst['variant']})"
    ]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    quiet_third_party_logs()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peaks = {"fp32": args.peak_gflops or measured_peak_gflops(device, torch.float32)}
    if "bf16" in args.variants:
        peaks["bf16"] = args.peak_gflops or measured_peak_gflops(device, torch.bfloat16)
    rows = []
    for size in args.sizes:
        for method in args.methods:
            for task in args.tasks:
                for variant in args.variants:
                    rows.append(measure_row(args, method, task, size, variant, peaks))
                    print(markdown(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    header = (
        f"{args.device}, {args.threads} thread(s), peak GFLOP/s "
        + ", ".join(f"{name} {value:.0f}" for name, value in peaks.items())
        + f", loops paired by {pairing(args)}, median of {args.repeats} runs ({args.large_repeats} above 64 px)"
    )
    print(f"\n{header}\n\n{markdown(rows, COLUMNS)}\n")
    for line in goal_lines(rows, args.device):
        print(line)
    path = write_csv(rows, COLUMNS, args.out or RESULTS / f"step_speed_{args.device}.csv")
    print(f"written: {path}")
    return rows


if __name__ == "__main__":
    main()
