"""Phase retrieval: HIO+ER against DIP with ES-WMV, noiseless and with photon-count noise.

Every DIP row is one job of the platform itself, the config `python launch.py task=phase_retrieval
...` would compose, run by ``dip_lightning.job.run.run``; the HIO+ER row of an image is the
baseline that same job computes (the operator's ``pseudo_inverse``, from the same observation).
All scores are taken after the alignment that removes the shift and the flip x(-r) the Fourier
magnitudes cannot see. Images: scikit-image's ``camera`` resized to ``--size`` (the whole scene,
``data.resize=true``) and the Shepp-Logan phantom at ``--size``. Noise: none, and
``noise=intensity_poisson`` with ``--photons`` photons per image.

Columns: PSNR and SSIM of the reported image (DIP: the output EMA around the step ES-WMV
detects), the best PSNR of the raw output over the run (``peak_psnr``, an oracle the run cannot
know), the detected step, the steps run, the job's wall time, and ``vs_hio``: the row's PSNR
minus HIO+ER's on the same observation (the reference of the table).

    python benchmarks/phase_retrieval_table.py                        # 64 px, 3000 steps
    python benchmarks/phase_retrieval_table.py --quick                # seconds: a smoke test

Prints a Markdown table and writes ``benchmarks/results/phase_retrieval_table_<device>.csv``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from dip_lightning.config import compose_config  # noqa: E402
from dip_lightning.job.run import run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
IMAGES: dict[str, list[str]] = {
    "camera": ["data=camera", "data.resize=true"],
    "shepp_logan": ["data=shepp_logan"],
}
COLUMNS = (
    "image",
    "noise",
    "method",
    "psnr",
    "ssim",
    "vs_hio",
    "peak_psnr",
    "detected_step",
    "steps",
    "seconds",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--images", nargs="+", default=list(IMAGES), choices=list(IMAGES))
    parser.add_argument("--photons", type=float, default=1e6, help="photons per image of the noisy case")
    parser.add_argument("--steps", type=int, default=3000, help="most DIP steps (ES-WMV may stop earlier)")
    parser.add_argument("--model", default="skip_light", help="model config (skip_tiny, skip_light, skip)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per job")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "outputs" / "benchmarks" / "phase_retrieval")
    parser.add_argument(
        "--csv", type=Path, default=None, help="default: results/phase_retrieval_table_<device>.csv"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["dip"],
        choices=("dip", "hio_input"),
        help="DIP rows: dip (noise input), hio_input (the HIO+ER image as input, method.input.kind=pseudo_inverse)",
    )
    parser.add_argument("--noises", nargs="+", default=["none", "poisson"], choices=("none", "poisson"))
    parser.add_argument(
        "--quick", action="store_true", help="32 px, skip_tiny, 5 steps, short HIO: a smoke test"
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.model = 32, 5, "skip_tiny"
        args.overrides = ["operator.hio_iterations=20", "operator.er_iterations=5", *args.overrides]
    return args


def noise_cases(args: argparse.Namespace) -> dict[str, list[str]]:
    cases = {
        "none": ["noise=none"],
        f"poisson {args.photons:.0e}": ["noise=intensity_poisson", f"noise.photons={args.photons}"],
    }
    return {name: overrides for name, overrides in cases.items() if name.split()[0] in args.noises}


# DIP variants: row label, directory suffix, overrides.
VARIANTS = {
    "dip": ("DIP @wmv", "", []),
    "hio_input": (
        "DIP, HIO input @wmv",
        "_hio_input",
        ["method.input.kind=pseudo_inverse", "method.input.scale=1.0"],
    ),
}


def run_job(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    """One platform job; its metrics.json."""
    run(compose_config(overrides, output_dir))
    return json.loads((output_dir / "metrics.json").read_text())


def case_rows(args: argparse.Namespace, image: str, noise: str, noise_overrides: list[str]) -> list[dict]:
    """HIO+ER and the DIP variants (ES-WMV) on one observation."""
    overrides = [
        "task=phase_retrieval",
        "logger=none",
        "stopping=wmv",
        f"model={args.model}",
        f"data.size={args.size}",
        f"trainer.max_steps={args.steps}",
        f"num_threads={args.threads}",
        "trainer.check_val_every_n_epoch=100000",  # evaluate once, at the end
        *(["trainer=gpu"] if args.device == "gpu" else []),
        *IMAGES[image],
        *noise_overrides,
        *args.overrides,
    ]
    rows: list[dict] = []
    for variant in args.variants:
        label, suffix, extra = VARIANTS[variant]
        directory = args.out_dir / f"{image}_{noise.split()[0]}{suffix}"
        start = time.perf_counter()
        metrics = run_job([*overrides, *extra], directory)
        print(
            f"{image} / {noise}: {label} {metrics['psnr']:.2f} dB, HIO+ER {metrics['baseline_psnr']:.2f} dB "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        if not rows:
            hio = {"image": image, "noise": noise, "method": "HIO+ER", "vs_hio": 0.0}
            hio.update(psnr=metrics["baseline_psnr"], ssim=metrics["baseline_ssim"])
            rows.append({**dict.fromkeys(COLUMNS), **hio})
        rows.append(
            {
                "image": image,
                "noise": noise,
                "method": label,
                "psnr": metrics["psnr"],
                "ssim": metrics["ssim"],
                "vs_hio": metrics["psnr"] - metrics["baseline_psnr"],
                "peak_psnr": metrics.get("peak_psnr"),
                "detected_step": metrics.get("detected_step"),
                "steps": metrics["steps"],
                "seconds": metrics["seconds"],
            }
        )
    return rows


def format_cell(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if column in ("psnr", "peak_psnr"):
        return f"{value:.2f}"
    if column == "vs_hio":
        return f"{value:+.2f}"
    if column == "ssim":
        return f"{value:.3f}"
    if column in ("steps", "detected_step", "seconds"):
        return f"{value:.0f}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    return harness.markdown(rows, COLUMNS, format_cell)


def write_csv(rows: list[dict], path: Path) -> None:
    harness.write_csv(rows, COLUMNS, path, float_format=None)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    rows: list[dict] = []
    for image in args.images:
        for noise, noise_overrides in noise_cases(args).items():
            rows += case_rows(args, image, noise, noise_overrides)
    print(
        f"\nPhase retrieval {args.size}x{args.size}, 2x oversampling, model {args.model}, "
        f"DIP at most {args.steps} steps with ES-WMV\n"
    )
    print(markdown(rows))
    path = args.csv or RESULTS / f"phase_retrieval_table_{args.device}.csv"
    write_csv(rows, path)
    print(f"\nwritten: {path}")
    return rows


if __name__ == "__main__":
    main()
