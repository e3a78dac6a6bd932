"""Deep Random Projector against DIP: wall time to DIP's peak PSNR - 0.5 dB, and DRP's plateau.

For every case (an image at a size, Gaussian denoising at sigma 0.1) the platform's own job trains
plain DIP (``model=skip_light``, Adam 0.01, input perturbation 1/30) and DRP (``method=drp``, the
reference's denoising settings) for the same number of steps, one after the other in this process,
the order alternating from case to case. A callback stamps the wall clock after every step; the
per-step PSNR of the raw network output comes from the run's curves. The target is DIP's peak raw
PSNR minus 0.5 dB; the table gives each method's steps and seconds to first reach it, the ratio
of the seconds (DRP / DIP; the goal is at most 1/3), the same against the peak of DIP's output
EMA (what DIP reports; DRP still its raw output), the median ms per step of each, and DRP's
peak and final PSNR (the goal: the final within 0.5 dB of the peak, i.e. a plateau, not DIP's
overfitting). A method that never reaches the target gets no time (and the ratio is empty).

On a shared CPU the absolute times wander with the load; the ratio of two runs a few minutes
apart is rough. Run with one thread:

    OMP_NUM_THREADS=1 python benchmarks/drp_speed.py --xray /path/to/BACTERIA-1351146-0006.jpg
    python benchmarks/drp_speed.py --quick          # seconds: the smoke test's size

Writes ``benchmarks/results/drp_speed_cpu.csv``.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import markdown, write_csv  # noqa: E402
from dip_lightning.config import compose_config  # noqa: E402
from dip_lightning.job.run import quiet_third_party_logs, run  # noqa: E402

DEFAULT_CSV = ROOT / "benchmarks" / "results" / "drp_speed_cpu.csv"
MARGIN_DB = 0.5
TIME_GOAL = 1.0 / 3.0
PLATEAU_GOAL_DB = 0.5
METHODS: dict[str, list[str]] = {"dip": ["method=dip"], "drp": ["method=drp"]}
COLUMNS = (
    "image",
    "size",
    "steps",
    "dip_peak",
    "dip_peak_step",
    "dip_final",
    "target",
    "dip_steps_to_target",
    "dip_s_to_target",
    "drp_steps_to_target",
    "drp_s_to_target",
    "time_ratio",
    "dip_ema_peak",
    "ema_target",
    "dip_ema_s_to_target",
    "drp_s_to_ema_target",
    "ema_time_ratio",
    "dip_ms",
    "drp_ms",
    "ms_ratio",
    "drp_peak",
    "drp_peak_step",
    "drp_final",
    "drp_drop",
    "time_goal",
    "plateau_goal",
)


class StepClock(pl.Callback):
    """Wall-clock seconds since the start of training at the end of every step (the last run's
    clock is left in :attr:`finished`)."""

    finished: ClassVar[list[float] | None] = None

    def __init__(self) -> None:
        self.start = 0.0
        self.stamps: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stamps.append(time.perf_counter() - self.start)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        StepClock.finished = list(self.stamps)


def image_overrides(image: str, size: int, xray: Path | None) -> list[str]:
    """The data overrides of a case: ``camera`` or ``xray`` (the tuning X-ray, a file)."""
    if image == "camera":
        return [
            "data=package",
            "data.name=camera",
            "data.resize=true",
            "data.channels=1",
            f"data.size={size}",
        ]
    if image == "xray":
        if xray is None or not xray.is_file():
            raise SystemExit(f"--xray: give the tuning X-ray file (got {xray})")
        return ["data=file", f"data.path={xray}", "data.resize=true", "data.channels=1", f"data.size={size}"]
    raise SystemExit(f"unknown image {image!r}: camera or xray")


def train(method: str, case: list[str], steps: int, dip_model: str) -> dict[str, Any]:
    """One run to ``steps`` steps: its per-step raw PSNR, EMA PSNR and wall-clock stamps."""
    clock = importlib.import_module("benchmarks.drp_speed").StepClock  # the class the job builds
    clock.finished = None
    overrides = [
        "task=denoising",
        "noise.sigma=0.1",
        *METHODS[method],
        *([f"model={dip_model}"] if method == "dip" else []),
        *case,
        "stopping=fixed",
        "logger=none",
        f"trainer.max_steps={steps}",
        f"trainer.check_val_every_n_epoch={steps}",
        f"callbacks.image_logger.every_n_steps={steps}",
        "callbacks.progress.mode=none",
        "checkpoint.every_n_steps=0",
        "checkpoint.save_last=false",
        "+callbacks.step_clock._target_=benchmarks.drp_speed.StepClock",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        run(compose_config(overrides, tmp))
        curves = json.loads((Path(tmp) / "curves.json").read_text())
    stamps = clock.finished
    if stamps is None or len(stamps) != len(curves["psnr"]):
        raise RuntimeError(
            f"{method}: the clock saw {stamps and len(stamps)} steps, the curves {len(curves['psnr'])}"
        )
    return {"psnr": curves["psnr"], "ema": curves["psnr_ema"], "stamps": stamps}


def first_reach(psnr: list[float], stamps: list[float], target: float) -> tuple[int | None, float]:
    """The first step whose PSNR is at least ``target`` and the seconds to its end."""
    for step, value in enumerate(psnr):
        if value >= target:
            return step, stamps[step]
    return None, math.nan


def median_ms(stamps: list[float], warmup: int) -> float:
    spans = [b - a for a, b in itertools.pairwise(stamps)][warmup:]
    return 1000.0 * statistics.median(spans) if spans else math.nan


def compare(image: str, size: int, dip: dict[str, Any], drp: dict[str, Any], warmup: int) -> dict[str, Any]:
    """One table row from the two runs of a case."""
    peak = max(dip["psnr"])
    target = peak - MARGIN_DB
    dip_step, dip_s = first_reach(dip["psnr"], dip["stamps"], target)
    drp_step, drp_s = first_reach(drp["psnr"], drp["stamps"], target)
    drp_peak = max(drp["psnr"])
    ratio = drp_s / dip_s if drp_step is not None and dip_s > 0 else math.nan
    # DIP reports its output EMA: the same comparison against the EMA's peak (DRP: its output).
    ema_peak = max(dip["ema"])
    _, dip_ema_s = first_reach(dip["ema"], dip["stamps"], ema_peak - MARGIN_DB)
    drp_ema_step, drp_ema_s = first_reach(drp["psnr"], drp["stamps"], ema_peak - MARGIN_DB)
    ema_ratio = drp_ema_s / dip_ema_s if drp_ema_step is not None and dip_ema_s > 0 else math.nan
    dip_ms, drp_ms = median_ms(dip["stamps"], warmup), median_ms(drp["stamps"], warmup)
    return {
        "image": image,
        "size": size,
        "steps": len(dip["psnr"]),
        "dip_peak": peak,
        "dip_peak_step": dip["psnr"].index(peak),
        "dip_final": dip["psnr"][-1],
        "target": target,
        "dip_steps_to_target": dip_step,
        "dip_s_to_target": dip_s,
        "drp_steps_to_target": drp_step,
        "drp_s_to_target": drp_s,
        "time_ratio": ratio,
        "dip_ema_peak": ema_peak,
        "ema_target": ema_peak - MARGIN_DB,
        "dip_ema_s_to_target": dip_ema_s,
        "drp_s_to_ema_target": drp_ema_s,
        "ema_time_ratio": ema_ratio,
        "dip_ms": dip_ms,
        "drp_ms": drp_ms,
        "ms_ratio": drp_ms / dip_ms,
        "drp_peak": drp_peak,
        "drp_peak_step": drp["psnr"].index(drp_peak),
        "drp_final": drp["psnr"][-1],
        "drp_drop": drp_peak - drp["psnr"][-1],
        "time_goal": bool(max(ratio, ema_ratio) <= TIME_GOAL),  # NaN (never reached) fails
        "plateau_goal": bool(drp_peak - drp["psnr"][-1] <= PLATEAU_GOAL_DB),
    }


def parse_case(text: str) -> tuple[str, int]:
    image, _, size = text.partition(":")
    return image, int(size or 64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        nargs="+",
        type=parse_case,
        default=[("camera", 64), ("camera", 128), ("xray", 128)],
        metavar="IMAGE:SIZE",
        help="camera:64 camera:128 xray:128 (xray needs --xray)",
    )
    parser.add_argument(
        "--xray", type=Path, default=None, help="the tuning X-ray (BACTERIA-1351146-0006.jpg)"
    )
    parser.add_argument("--steps", type=int, default=1500, help="steps of each run (both methods)")
    parser.add_argument("--dip-model", default="skip_light")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the ms per step")
    parser.add_argument("--quick", action="store_true", help="camera at 32 px, 12 steps, skip_tiny DIP")
    parser.add_argument("--out", type=Path, default=DEFAULT_CSV)
    parser.add_argument(
        "--curves", type=Path, default=None, help="also write every run's PSNR curves and clock (JSON)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.steps, args.dip_model, args.warmup = [("camera", 32)], 12, "skip_tiny", 2
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    quiet_third_party_logs()
    rows = []
    for i, (image, size) in enumerate(args.cases):
        case = image_overrides(image, size, args.xray)
        order = ("dip", "drp") if i % 2 == 0 else ("drp", "dip")
        runs = {method: train(method, case, args.steps, args.dip_model) for method in order}
        rows.append(compare(image, size, runs["dip"], runs["drp"], args.warmup))
        if args.curves is not None:
            args.curves.mkdir(parents=True, exist_ok=True)
            (args.curves / f"{image}_{size}.json").write_text(json.dumps(runs))
        write_csv(rows, COLUMNS, args.out)  # after every case: a long run keeps what it measured
        print(f"{image} {size}px done: {json.dumps(rows[-1], default=str)}", flush=True)
    print(markdown(rows, COLUMNS))
    print(f"\nwrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
