"""Accelerated MRI: zero-filled, DIP (skip), DIP (ConvDecoder), DIP+TV and MFVI at 4x and 8x.

Every row is one job of the platform (`python launch.py task=mri ...` composed by
``dip_lightning.config.compose_config`` and run by ``dip_lightning.job.run.run``). All methods of an
image and acceleration share one observation: k-space simulated from the magnitude image, random
columns by fastMRI's rule (centre fraction 0.08 at 4x, 0.04 at 8x), complex Gaussian noise at
``--noise`` of the k-space rms. Every job runs with ``data_consistency=true``, so one job gives the
network's reconstruction (``psnr``, ``ssim``) and the same after the measured lines are put back
(``psnr_dc``). ES-WMV watches every job without stopping it (a ``StoppingMonitor``): ``wmv_step``
is the step it detects, ``wmv_gap`` = the peak PSNR of the raw output minus its PSNR at that step.

Images (``--images``): ``mr_small`` (pydicom's MR_small, 64 px), ``mr_abdomen`` (pydicom's
examples_overlay MR slice, resized to 128 px), ``nifti_example`` (middle slice of nibabel's
example4d, cropped to 96 x 96), each ``name:size``. The goal checked at the end: every DIP variant
at least 3 dB above zero-filled at 4x.

    python benchmarks/mri_table.py --quick                       # seconds: a smoke test
    python benchmarks/mri_table.py --steps 1500                  # MR_small at 64 px, 4x and 8x
    python benchmarks/mri_table.py --images mr_small:64 mr_abdomen:128 --steps 1500

Prints a Markdown table and writes ``benchmarks/results/mri_table.csv``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.ct_table import run_job  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# name -> (label, overrides); zero-filled is read from the baseline every job saves.
METHODS: dict[str, tuple[str, list[str]]] = {
    "zero_filled": ("zero-filled", []),
    "dip": ("DIP (skip)", ["method=dip", "model=SKIP"]),
    "convdecoder": ("DIP (ConvDecoder)", ["method=dip", "model=convdecoder"]),
    "dip_tv": ("DIP+TV", ["method=dip", "model=SKIP", "regulariser=tv"]),
    "mfvi": ("MFVI", ["method=mfvi", "model=SKIP"]),
}
DIP_VARIANTS = ("DIP (skip)", "DIP (ConvDecoder)", "DIP+TV")
IMAGES = {"mr_small": ["data=mr_small"], "mr_abdomen": ["data=package", "data.name=mr_abdomen"]}
IMAGES["nifti_example"] = ["data=package", "data.name=nifti_example"]
COLUMNS = (
    "image",
    "acceleration",
    "method",
    "psnr",
    "ssim",
    "psnr_dc",
    "ssim_dc",
    "peak_psnr",
    "wmv_step",
    "wmv_psnr",
    "wmv_gap",
    "steps",
    "seconds",
)
GOAL_GAIN_DB = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images", nargs="+", default=["mr_small:64"], help="NAME:SIZE, NAME one of " + ", ".join(IMAGES)
    )
    parser.add_argument("--accelerations", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--noise", type=float, default=0.05, help="noise std relative to the k-space rms")
    parser.add_argument("--steps", type=int, default=1500, help="training steps of every method")
    parser.add_argument("--model", default="skip_light", help="the skip network of the skip rows")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="tiny networks, 32 px, a few steps")
    parser.add_argument(
        "--reuse", action="store_true", help="read back jobs already run with the same overrides"
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "outputs" / "benchmarks" / "mri_table")
    parser.add_argument("--csv", type=Path, default=None, help="default: results/mri_table.csv")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_args(argv)
    images = []
    for item in args.images:
        name, _, size = item.partition(":")
        if name not in IMAGES or not size.isdigit():
            parser.error(f"--images {item}: expected NAME:SIZE with NAME one of {list(IMAGES)}")
        images.append((name, int(size)))
    args.image_list = images
    if args.quick:
        args.image_list = [(name, 32) for name, _ in images[:1]]
        args.steps = min(args.steps, 4)
    return args


def job_overrides(
    args: argparse.Namespace, name: str, size: int, acceleration: int, method: str
) -> list[str]:
    overrides = [
        "task=mri",
        "logger=none",
        *IMAGES[name],
        f"data.size={size}",
        "data.resize=true",
        "data.channels=1",
        f"operator.acceleration={acceleration}",
        f"noise.sigma={args.noise}",
        "data_consistency=true",
        f"trainer.max_steps={args.steps}",
        "trainer.check_val_every_n_epoch=100000",
        *METHODS[method][1],
    ]
    skip = "skip_tiny" if args.quick else args.model
    overrides = [f"model={skip}" if o == "model=SKIP" else o for o in overrides]
    if args.quick:
        if method == "convdecoder":
            overrides += ["model.channels=8", "model.layers=4", "model.in_size=[4,4]"]
        if method == "mfvi":
            overrides.append("method.num_samples=2")
    return [*overrides, *args.overrides]


def run_case(args: argparse.Namespace, name: str, size: int, acceleration: int) -> list[dict[str, Any]]:
    """Every method on one image at one acceleration; zero-filled from the first job's baseline."""
    rows: list[dict[str, Any]] = []
    label = f"{name}_{size}"
    baseline: dict[str, Any] | None = None
    for method in [m for m in args.methods if m != "zero_filled"]:
        overrides = job_overrides(args, name, size, acceleration, method)
        start = time.perf_counter()
        directory = args.out_dir / label / f"x{acceleration}" / method
        metrics, curves = run_job(overrides, directory, args.reuse, ["wmv"])
        print(
            f"{label} x{acceleration} {method}: {metrics['psnr_before_data_consistency']:.2f} dB "
            f"in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        baseline = baseline or metrics
        watched = curves["monitor"]["criteria"]["wmv"]
        peak = curves["monitor"].get("peak_psnr")
        detected = watched.get("detected_psnr")
        rows.append(
            {
                **dict.fromkeys(COLUMNS),
                "image": label,
                "acceleration": acceleration,
                "method": METHODS[method][0],
                "psnr": metrics["psnr_before_data_consistency"],
                "ssim": metrics["ssim_before_data_consistency"],
                "psnr_dc": metrics["psnr"],
                "ssim_dc": metrics["ssim"],
                "peak_psnr": peak,
                "wmv_step": watched.get("detected_step"),
                "wmv_psnr": detected,
                "wmv_gap": None if peak is None or detected is None else peak - detected,
                "steps": metrics["steps"],
                "seconds": metrics["seconds"],
            }
        )
    if "zero_filled" in args.methods and baseline is not None:
        zero = {"psnr": baseline["baseline_psnr"], "ssim": baseline["baseline_ssim"], "steps": 0}
        rows.insert(
            0,
            {
                **dict.fromkeys(COLUMNS),
                "image": label,
                "acceleration": acceleration,
                "method": "zero-filled",
                **zero,
            },
        )
    return rows


def format_cell(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if column.startswith("ssim"):
        return f"{value:.3f}"
    if isinstance(value, float) and column not in ("steps", "seconds", "wmv_step", "acceleration"):
        return f"{value:.2f}"
    return f"{value:.0f}" if isinstance(value, int | float) else str(value)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(format_cell(r[c], c) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def goals(rows: list[dict]) -> list[str]:
    """Every DIP variant at least GOAL_GAIN_DB above zero-filled at 4x (with and without DC)."""
    lines = []
    by = {(r["image"], r["acceleration"], r["method"]): r for r in rows}
    for image, acceleration, method in by:
        zero = by.get((image, acceleration, "zero-filled"))
        if acceleration != 4 or method not in DIP_VARIANTS or zero is None:
            continue
        row = by[(image, acceleration, method)]
        gain, gain_dc = row["psnr"] - zero["psnr"], row["psnr_dc"] - zero["psnr"]
        verdict = "met" if gain >= GOAL_GAIN_DB else "not met"
        lines.append(
            f"{image} x4 {method}: {gain:+.2f} dB over zero-filled ({gain_dc:+.2f} dB with data "
            f"consistency; goal >= {GOAL_GAIN_DB:g} dB: {verdict})"
        )
    return lines


def write_csv(rows: list[dict], path: Path) -> None:
    harness.write_csv(rows, COLUMNS, path, float_format=None)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    rows: list[dict] = []
    for name, size in args.image_list:
        for acceleration in args.accelerations:
            rows += run_case(args, name, size, acceleration)
    print(
        f"\nMRI, random columns, {args.noise:.0%} k-space noise, {args.steps} steps, skip rows: {args.model}\n"
    )
    print(markdown(rows) + "\n")
    print("\n".join(goals(rows)))
    path = args.csv or RESULTS / "mri_table.csv"
    write_csv(rows, path)
    print(f"\nwritten: {path}")
    return rows


if __name__ == "__main__":
    main()
