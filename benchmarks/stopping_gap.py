"""How far below the peak PSNR each early-stopping criterion stops, on DIP denoising.

For every (image, noise level) the platform's own job (``dip_lightning.job.run.run``) trains plain DIP
with ``stopping=fixed`` for long enough to overfit. A
:class:`~dip_lightning.stopping.monitor.StoppingMonitor` feeds ES-WMV, ES-EMV, the discrepancy
principle (with the simulated noise level, and with ``discrepancy_est`` the level estimated from
the observation) and the oracle from that one run; each is frozen where its own rule would have ended a
run of its own, so one training run per case measures all of them. The gap of a criterion is
``peak_psnr - detected_psnr``: the PSNR of the raw network output at the best step of the run minus
that of the output at the detected step (the reconstruction the criterion reports).

Self-validation (``self_validation_k<k>``, one per ``--sv-every`` value, training its autoencoder
every k steps) is watched from the same run. The monitor also times every criterion's update and
the rest of each step (DIP alone: forward, backward, optimiser, logging), interleaved step by step
in the same process, so that the load of a shared machine falls on both. ``ms_per_step`` is the
criterion's mean time per step over the steps where it had a score and had not stopped yet,
``dip_ms_per_step`` the mean DIP time over those same steps, ``overhead`` their ratio.

Prints a Markdown table (per case and the mean per criterion) and writes the CSV. Without
self-validation (``--sv-every ''``; 64x64 images, the tiny test network, 2000 steps, one thread)
it took 22 minutes on two busy shared CPU cores (one case needs about 70 s of CPU time). With it
(the default ``--sv-every 10``) a case took 8 to 17 minutes there: one autoencoder epoch over 256
outputs costs about 3 s of one core.

    python benchmarks/stopping_gap.py [--steps 2000] [--patience 1000] [--size 64]
        [--images camera,ct_small,mr_small] [--sigmas 0.1,0.2] [--model skip_tiny]
        [--sv-every 10] [--sv-window 256] [--sv-patience 500]

``--sv-every ''`` leaves self-validation out; ``--quick`` is a seconds-long smoke run (one 32 px
case, 60 steps, tiny windows) whose numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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
from dip_lightning.stopping.monitor import StoppingMonitor  # noqa: E402

TARGET_GAP_DB = 1.5
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "stopping_gap_cpu.csv"

# Grey test images that ship with installed packages, resized to the benchmark size.
IMAGES: dict[str, list[str]] = {
    "camera": ["data=package", "data.name=camera", "data.resize=true", "data.channels=1"],
    "ct_small": ["data=package", "data.name=ct_small", "data.resize=true", "data.channels=1"],
    "mr_small": ["data=package", "data.name=mr_small", "data.resize=true", "data.channels=1"],
    "shepp_logan": ["data=shepp_logan"],
}


class TimedStoppingMonitor(StoppingMonitor):
    """A :class:`StoppingMonitor` that also times each criterion and the rest of every step.

    The time between the end of this hook at one step and its start at the next is the training
    step without the criteria (DIP alone); each criterion's ``observe`` is timed around the call.
    Both are taken at every step of the same run, so a busy machine slows both alike.
    """

    def __init__(self, criteria: Any, path: str | Path | None = None) -> None:
        super().__init__(criteria, path)
        self.dip_seconds: list[float] = []
        self.criterion_seconds: dict[str, dict[int, float]] = {name: {} for name in self.watchers}
        self.first_scored: dict[str, int | None] = dict.fromkeys(self.watchers)
        self._left_at: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        entered = time.perf_counter()
        index = len(self.dip_seconds)
        self.dip_seconds.append(math.nan if self._left_at is None else entered - self._left_at)
        for name, watcher in self.watchers.items():
            if watcher.stopped_early:
                continue
            start = time.perf_counter()
            watcher.observe(trainer, outputs)
            self.criterion_seconds[name][index] = time.perf_counter() - start
            if self.first_scored[name] is None and watcher.criterion.last_score is not None:
                self.first_scored[name] = index
        self._left_at = time.perf_counter()

    def summarise(self, pl_module: Any) -> dict[str, Any]:
        results = super().summarise(pl_module)
        for name, seconds in self.criterion_seconds.items():
            first = self.first_scored[name]
            steps = [i for i in seconds if first is not None and i >= first and i > 0]
            own = sum(seconds[i] for i in steps)
            dip = sum(self.dip_seconds[i] for i in steps)
            results["criteria"][name]["timing"] = {
                "timed_steps": len(steps),
                "ms_per_step": 1e3 * own / len(steps) if steps else None,
                "dip_ms_per_step": 1e3 * dip / len(steps) if steps else None,
                "overhead": own / dip if steps and dip > 0 else None,
            }
        return results


def sv_name(every: int) -> str:
    return f"self_validation_k{every}"


BASE_CRITERIA = ("wmv", "emv", "discrepancy", "discrepancy_est", "oracle")


def watch_order(name: str) -> tuple[int, int]:
    """The base criteria in their usual order, then self-validation by increasing k."""
    if name in BASE_CRITERIA:
        return (BASE_CRITERIA.index(name), 0)
    return (len(BASE_CRITERIA), int(name.rsplit("_k", 1)[1]))


def monitor_node(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """The callback config of a timed StoppingMonitor over the criteria, with the CLI settings."""
    self_validation = {
        sv_name(every): {
            "_target_": "dip_lightning.stopping.self_validation.SelfValidation",
            "window": args.sv_window,
            "patience": args.sv_patience,
            "update_every": every,
        }
        for every in args.sv_every
    }
    return {
        "_target_": "benchmarks.stopping_gap.TimedStoppingMonitor",
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
            **self_validation,
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


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def rows_of(image: str, sigma: float, results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name in sorted(results["criteria"], key=watch_order):
        entry = results["criteria"][name]
        timing = entry["timing"]
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
                "detected_psnr": rounded(entry.get("detected_psnr"), 3),
                "noise_std": None if entry.get("noise_std") is None else round(entry["noise_std"], 4),
                "gap_db": rounded(entry.get("detection_gap"), 3),
                "detected_ema_psnr": ema_at(results, entry["detected_step"]),
                "centred_ema_psnr": None
                if entry["detected_step"] is None
                else ema_at(results, entry["detected_step"] + results["ema_lag"]),
                "seconds": round(results["seconds"], 1),
                "ms_per_step": rounded(timing["ms_per_step"], 3),
                "dip_ms_per_step": rounded(timing["dip_ms_per_step"], 3),
                "overhead": rounded(timing["overhead"], 4),
            }
        )
    return rows


def mean_gap(rows: list[dict[str, Any]], name: str) -> float:
    """Mean gap of criterion ``name`` over the cases where it detected something (nan if none)."""
    gaps = [r["gap_db"] for r in rows if r["criterion"] == name and r["gap_db"] is not None]
    return statistics.fmean(gaps) if gaps else math.nan


def criteria_in(rows: list[dict[str, Any]]) -> list[str]:
    """The criteria of ``rows`` in the order they were watched."""
    return list(dict.fromkeys(r["criterion"] for r in rows))


def markdown(rows: list[dict[str, Any]]) -> str:
    """Per-case table (gap in dB, detected step in brackets) and the mean gap per criterion."""
    names = criteria_in(rows)
    cases = sorted({(r["image"], r["sigma"]) for r in rows}, key=lambda c: (c[1], c[0]))
    header = "| image | sigma | peak PSNR (step) | " + " | ".join(f"{c} gap (step)" for c in names) + " |"
    lines = [header, "|" + "---|" * (3 + len(names))]
    for image, sigma in cases:
        by_name = {r["criterion"]: r for r in rows if r["image"] == image and r["sigma"] == sigma}
        first = next(iter(by_name.values()))
        cells = [
            "none"
            if by_name[c]["gap_db"] is None
            else f"{by_name[c]['gap_db']:.2f} ({by_name[c]['detected_step']})"
            for c in names
        ]
        lines.append(
            f"| {image} | {sigma:g} | {first['peak_psnr']:.2f} ({first['peak_step']}) | "
            + " | ".join(cells)
            + " |"
        )
    means = {c: mean_gap(rows, c) for c in names}
    lines.append("| **mean gap** | | | " + " | ".join(f"**{means[c]:.2f}**" for c in names) + " |")
    return "\n".join(lines)


def overhead_table(rows: list[dict[str, Any]]) -> str:
    """Per criterion: its mean ms per step, DIP's over the same steps of the same runs, the ratio."""
    lines = [
        "| criterion | mean gap dB | criterion ms/step | DIP ms/step (same steps) | overhead |",
        "|---|---|---|---|---|",
    ]
    for name in criteria_in(rows):
        mine = [r for r in rows if r["criterion"] == name and r["ms_per_step"] is not None]
        gap = mean_gap(rows, name)
        if not mine:
            lines.append(f"| {name} | {gap:.2f} | | | |")
            continue
        own = statistics.fmean(r["ms_per_step"] for r in mine)
        dip = statistics.fmean(r["dip_ms_per_step"] for r in mine)
        ratio = own / dip
        shown = f"+{ratio:.2%}" if ratio < 1 else f"{ratio:.1f}x DIP's step"
        lines.append(f"| {name} | {gap:.2f} | {own:.2f} | {dip:.2f} | {shown} |")
    return "\n".join(lines)


REPORTED_COLUMNS = {
    "detected_psnr": "output",
    "detected_ema_psnr": "ema",
    "centred_ema_psnr": "ema_centred",
}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
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
    parser.add_argument(
        "--sv-every", default="10", help="self-validation update_every values (comma-separated; '' for none)"
    )
    parser.add_argument("--sv-window", type=int, default=256, help="self-validation queue W")
    parser.add_argument("--sv-patience", type=int, default=500, help="self-validation patience P")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run; numbers mean nothing")
    args = parser.parse_args(argv)
    args.sv_every = [int(k) for k in args.sv_every.split(",") if k.strip()]
    if args.quick:
        args.images, args.sigmas, args.size, args.steps = "camera", "0.1", 32, 60
        args.window, args.patience, args.sv_window, args.sv_patience = 10, 20, 8, 20
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
                write_csv(rows, list(rows[0]), args.csv)  # after every case: a stopped run keeps its cases
                print(
                    f"# {image} sigma={sigma:g}: peak {results['peak_psnr']:.2f} dB at step "
                    f"{results['peak_step']}, {results['seconds']:.0f} s",
                    flush=True,
                )
    print()
    print(
        f"DIP denoising, {args.size}x{args.size}, model={args.model}, {args.steps} steps, "
        f"W={args.window}, alpha={args.alpha}, P={args.patience}, tau={args.tau}, seed={args.seed}"
    )
    print()
    print(markdown(rows))
    print()
    for name in ("wmv", "emv"):
        mean = mean_gap(rows, name)
        verdict = "meets" if mean <= TARGET_GAP_DB else "misses"
        print(f"{name}: mean gap {mean:.2f} dB {verdict} the {TARGET_GAP_DB} dB goal")
    print()
    print("Mean PSNR of the image reported for the detection (stopping.report):")
    for name in criteria_in(rows):
        mine = [r for r in rows if r["criterion"] == name]
        columns = {key: [r[key] for r in mine if r[key] is not None] for key in REPORTED_COLUMNS}
        cells = ", ".join(
            f"{label} {statistics.fmean(values):.2f}"
            for label, values in zip(REPORTED_COLUMNS.values(), columns.values())
            if values
        )
        print(f"  {name}: {cells} dB")
    print()
    print(overhead_table(rows))
    print(f"total {time.perf_counter() - start:.0f} s; CSV: {args.csv}")
    return rows


if __name__ == "__main__":
    main()
