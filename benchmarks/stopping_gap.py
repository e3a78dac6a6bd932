"""How far below the peak PSNR each early-stopping criterion stops, on DIP denoising.

For every (image, noise level) the platform's own job (``dip_lightning.job.run.run``) trains plain DIP
with ``stopping=fixed`` for long enough to overfit. A
:class:`~dip_lightning.stopping.monitor.StoppingMonitor` feeds ES-WMV, ES-EMV, the discrepancy
principle (with the simulated noise level, and with ``discrepancy_est`` the level estimated from
the observation) and the oracle from that one run; each is frozen where its own rule would have ended a
run of its own, so one training run per case measures all of them. The gap of a criterion is
``peak_psnr - detected_psnr``: the PSNR of the raw network output at the best step of the run minus
that of the output at the detected step (the reconstruction the criterion reports).

Prints a Markdown table (per case and the mean per criterion) and writes the CSV. At the defaults
(64x64 images, the tiny test network, 2000 steps, one thread) it took 22 minutes on two busy
shared CPU cores (one case needs about 70 s of CPU time):

    python benchmarks/stopping_gap.py [--steps 2000] [--patience 1000] [--size 64]
        [--images camera,ct_small,mr_small] [--sigmas 0.1,0.2] [--model skip_tiny]
"""

from __future__ import annotations

import argparse
import json
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

CRITERIA = ("wmv", "emv", "discrepancy", "discrepancy_est", "oracle")
TARGET_GAP_DB = 1.5
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "stopping_gap_cpu.csv"

# Grey test images that ship with installed packages, resized to the benchmark size.
IMAGES: dict[str, list[str]] = {
    "camera": ["data=package", "data.name=camera", "data.resize=true", "data.channels=1"],
    "ct_small": ["data=package", "data.name=ct_small", "data.resize=true", "data.channels=1"],
    "mr_small": ["data=package", "data.name=mr_small", "data.resize=true", "data.channels=1"],
    "shepp_logan": ["data=shepp_logan"],
}


def monitor_node(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """The callback config of a StoppingMonitor over the four criteria, with the CLI settings."""
    return {
        "_target_": "dip_lightning.stopping.monitor.StoppingMonitor",
        "path": str(path),
        "criteria": {
            "wmv": {
                "_target_": "dip_lightning.stopping.wmv.WindowedMovingVariance",
                "window": args.window,
                "patience": args.patience,
            },
            "emv": {
                "_target_": "dip_lightning.stopping.emv.ExponentialMovingVariance",
                "alpha": args.alpha,
                "patience": args.patience,
            },
            "discrepancy": {
                "_target_": "dip_lightning.stopping.discrepancy.DiscrepancyPrinciple",
                "tau": args.tau,
            },
            "discrepancy_est": {
                "_target_": "dip_lightning.stopping.discrepancy.DiscrepancyPrinciple",
                "tau": args.tau,
                "noise_std": "estimate",
            },
            "oracle": {"_target_": "dip_lightning.stopping.oracle.Oracle"},
        },
    }


def run_case(image: str, sigma: float, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One fixed-length DIP run watched by every criterion; returns the monitor's results."""
    output_dir = workdir / f"{image}_s{sigma:g}"
    overrides = [
        "preset=small",
        "task=denoising",
        "method=dip",
        "stopping=fixed",
        "logger=none",
        f"model={args.model}",
        *IMAGES[image],
        f"data.size={args.size}",
        f"noise.sigma={sigma}",
        f"trainer.max_steps={args.steps}",
        f"trainer.check_val_every_n_epoch={args.steps}",
        f"num_threads={args.threads}",
        f"seed={args.seed}",
    ]
    cfg = compose_config(overrides, output_dir)
    with open_dict(cfg):
        cfg.callbacks.stopping_monitor = monitor_node(args, output_dir / "stopping_monitor.json")
    start = time.perf_counter()
    run(cfg)
    seconds = time.perf_counter() - start
    results = json.loads((output_dir / "stopping_monitor.json").read_text())
    results["seconds"] = seconds
    results["psnr_ema"] = json.loads((output_dir / "curves.json").read_text())["psnr_ema"]
    decay = float(cfg.method.ema_decay)
    results["ema_lag"] = round(decay / (1.0 - decay))  # the EMA read this much later is centred
    return results


def ema_at(results: dict[str, Any], step: int | None) -> float | None:
    """PSNR of the output EMA at ``step`` (from the run's curves; the last one after the run's end,
    as ``stopping.report=ema_centred`` does), None when unknown."""
    curve = results.get("psnr_ema") or []
    if step is None or step < 0 or not curve:
        return None
    return round(curve[min(step, len(curve) - 1)], 3)


def rows_of(image: str, sigma: float, results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name in CRITERIA:
        entry = results["criteria"][name]
        rows.append(
            {
                "image": image,
                "sigma": sigma,
                "criterion": name,
                "steps": results["steps"],
                "peak_step": results["peak_step"],
                "peak_psnr": round(results["peak_psnr"], 3),
                "detected_step": entry["detected_step"],
                "stop_step": entry["stop_step"],
                "detected_psnr": round(entry["detected_psnr"], 3),
                "noise_std": None if entry.get("noise_std") is None else round(entry["noise_std"], 4),
                "gap_db": round(entry["detection_gap"], 3),
                "detected_ema_psnr": ema_at(results, entry["detected_step"]),
                "centred_ema_psnr": None
                if entry["detected_step"] is None
                else ema_at(results, entry["detected_step"] + results["ema_lag"]),
                "seconds": round(results["seconds"], 1),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """Per-case table (gap in dB, detected step in brackets) and the mean gap per criterion."""
    cases = sorted({(r["image"], r["sigma"]) for r in rows}, key=lambda c: (c[1], c[0]))
    header = "| image | sigma | peak PSNR (step) | " + " | ".join(f"{c} gap (step)" for c in CRITERIA) + " |"
    lines = [header, "|" + "---|" * (3 + len(CRITERIA))]
    for image, sigma in cases:
        by_name = {r["criterion"]: r for r in rows if r["image"] == image and r["sigma"] == sigma}
        first = next(iter(by_name.values()))
        cells = [f"{by_name[c]['gap_db']:.2f} ({by_name[c]['detected_step']})" for c in CRITERIA]
        lines.append(
            f"| {image} | {sigma:g} | {first['peak_psnr']:.2f} ({first['peak_step']}) | "
            + " | ".join(cells)
            + " |"
        )
    means = {c: statistics.fmean(r["gap_db"] for r in rows if r["criterion"] == c) for c in CRITERIA}
    lines.append("| **mean gap** | | | " + " | ".join(f"**{means[c]:.2f}**" for c in CRITERIA) + " |")
    return "\n".join(lines)


REPORTED_COLUMNS = {
    "detected_psnr": "output",
    "detected_ema_psnr": "ema",
    "centred_ema_psnr": "ema_centred",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default="camera,ct_small,mr_small")
    parser.add_argument("--sigmas", default="0.1,0.2")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="skip_tiny")
    parser.add_argument("--steps", type=int, default=2000, help="fixed run length (long enough to overfit)")
    parser.add_argument("--window", type=int, default=100, help="ES-WMV window W")
    parser.add_argument("--alpha", type=float, default=0.1, help="ES-EMV forgetting factor")
    parser.add_argument("--patience", type=int, default=1000, help="ES-WMV / ES-EMV patience P")
    parser.add_argument("--tau", type=float, default=1.1, help="discrepancy principle safety factor")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    images = [name.strip() for name in args.images.split(",") if name.strip()]
    unknown = [name for name in images if name not in IMAGES]
    if unknown:
        parser.error(f"unknown image(s) {unknown}; choose from {sorted(IMAGES)}")
    sigmas = [float(s) for s in args.sigmas.split(",")]

    logging.getLogger("dip_lightning").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stopping_gap_") as tmp:
        workdir = args.keep or Path(tmp)
        for sigma in sigmas:
            for image in images:
                results = run_case(image, sigma, args, workdir)
                rows += rows_of(image, sigma, results)
                print(
                    f"# {image} sigma={sigma:g}: peak {results['peak_psnr']:.2f} dB at step "
                    f"{results['peak_step']}, {results['seconds']:.0f} s",
                    flush=True,
                )
    write_csv(rows, list(rows[0]), args.csv)
    print()
    print(
        f"DIP denoising, {args.size}x{args.size}, model={args.model}, {args.steps} steps, "
        f"W={args.window}, alpha={args.alpha}, P={args.patience}, tau={args.tau}, seed={args.seed}"
    )
    print()
    print(markdown(rows))
    print()
    for name in ("wmv", "emv"):
        mean = statistics.fmean(r["gap_db"] for r in rows if r["criterion"] == name)
        verdict = "meets" if mean <= TARGET_GAP_DB else "misses"
        print(f"{name}: mean gap {mean:.2f} dB {verdict} the {TARGET_GAP_DB} dB goal")
    print()
    print("Mean PSNR of the image reported for the detection (stopping.report):")
    for name in CRITERIA:
        mine = [r for r in rows if r["criterion"] == name]
        columns = {key: [r[key] for r in mine if r[key] is not None] for key in REPORTED_COLUMNS}
        cells = ", ".join(
            f"{label} {statistics.fmean(values):.2f}"
            for label, values in zip(REPORTED_COLUMNS.values(), columns.values())
            if values
        )
        print(f"  {name}: {cells} dB")
    print(f"total {time.perf_counter() - start:.0f} s; CSV: {args.csv}")


if __name__ == "__main__":
    main()
