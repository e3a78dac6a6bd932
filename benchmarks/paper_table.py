"""DIP, SGLD, MC dropout and MFVI on one image: the comparison table of the MFVI-DIP paper.

Each row is one run of the platform (the composed Hydra config and ``dip_lightning.job.run.run``,
exactly what ``python launch.py`` does), on the same observation. The jobs compose the paper's own
comparison settings, ``experiment=paper_<task>`` (one learning rate for every method, per-method
optimisers and SGLD noise as in its training scripts; see conf/experiment/), and override only the
scale: image size, network, device and steps. Columns:

* ``peak PSNR``: the best PSNR of the per-step output over the run (``curves.json``);
* ``final PSNR``: the mean PSNR of the last 100 steps of that curve: close to the peak when a
  method does not overfit, well below it when it fits the noise;
* ``EMA peak / final``: the same two numbers on the curve of the output's exponential moving
  average (decay 0.99). For the stochastic methods the per-step output is one weight / dropout /
  Langevin sample, whose PSNR scatters from step to step, and the maximum of a scattered curve
  sits above its mean even without any overfitting; the EMA curve averages that scatter out;
* ``PSNR (reported)``, ``SSIM``: quality of the image the run reports (DIP: the output EMA; the
  Bayesian methods: the predictive mean);
* ``UCE``: calibration of the epistemic variance against the ground truth under three binnings:
  ours (15 bins), Laves et al.'s (21 bins) and Toelle et al.'s (10 bins, bins under 2 % left out);
  ``UCE obs.``: the same against the noisy observation (the papers' own choice), Laves / Toelle;
* ``NLL``: Gaussian NLL of the ground truth; ``seconds``: wall time of the whole job;
* ``log-lik. p1 / p2 / p10 / full``: the test log-likelihood of the ground truth per pixel
  (Antorán et al.; higher is better), the covariance of the method's samples block-diagonal over
  1x1, 2x2 and 10x10 patches, and whole (only for images of at most 1024 pixels); see
  docs/methods.md.

SGLD's variance is the spread of Adam iterates with injected noise (Cheng et al.'s heuristic), not
a posterior variance: its row says so. Each method can get its own step budget (``--steps-for
mcdropout=10000``) so that every row is at its own convergence; the table prints each row's steps.
SGLD's burn-in and sampling interval keep the paper's proportions (7000 and 50 of 50000 steps)
whatever the budget.

The image: ``--image`` takes a file, or ``package:<name>`` for an image that ships inside an
installed package (``package:ct_small``, ``package:mr_small``, ``package:retina``...; see
``data=package`` in the README), or ``camera`` (the default).

    python benchmarks/paper_table.py --threads 1            # 64x64 on the CPU
    python benchmarks/paper_table.py --image package:mr_small --steps 3000 --steps-for mcdropout=10000
    python benchmarks/paper_table.py --size 256 --device gpu --steps 50000 --model skip
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dip_lightning.config import compose_config  # noqa: E402
from dip_lightning.job.run import run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {"dip": "DIP", "sgld": "SGLD", "mcdropout": "MC dropout", "mfvi": "MFVI"}
ROW_NOTES = {"sgld": "variance: heuristic spread"}
FINAL_WINDOW = 100
REFERENCE_STEPS, REFERENCE_BURN_IN, REFERENCE_SAMPLE_EVERY = 50000, 7000, 50
PACKAGE_PREFIX = "package:"
COLUMNS = (
    "image",
    "method",
    "steps",
    "peak_psnr",
    "peak_step",
    "final_psnr",
    "peak_psnr_ema",
    "final_psnr_ema",
    "reported_psnr",
    "ssim",
    "input_psnr",
    "uce",
    "uce_laves",
    "uce_toelle",
    "uce_observation_laves",
    "uce_observation_toelle",
    "nll",
    "test_loglik_p1",
    "test_loglik_p2",
    "test_loglik_p10",
    "test_loglik_full",
    "seconds",
)


def sgld_schedule(steps: int) -> tuple[int, int]:
    """Burn-in and sampling interval in the reference proportions, scaled to ``steps``."""
    burn_in = round(steps * REFERENCE_BURN_IN / REFERENCE_STEPS)
    sample_every = max(1, round(steps * REFERENCE_SAMPLE_EVERY / REFERENCE_STEPS))
    return burn_in, sample_every


def image_overrides(image: str) -> list[str]:
    """Overrides that load ``image``: a package image, the camera, or a file."""
    if image.startswith(PACKAGE_PREFIX):
        return ["data=package", f"data.name={image[len(PACKAGE_PREFIX) :]}"]
    if image == "camera":
        return ["data=camera"]
    return ["data=file", f"data.path={image}"]


def steps_of(method: str, args: argparse.Namespace) -> int:
    return int(args.steps_for.get(method, args.steps))


def job_overrides(method: str, args: argparse.Namespace) -> list[str]:
    accelerator = {"cpu": "cpu", "gpu": "gpu", "auto": "auto"}[args.device]
    steps = steps_of(method, args)
    overrides = [
        f"experiment=paper_{args.task}",
        f"method={method}",
        *image_overrides(args.image),
        f"data.size={args.size}",
        f"model={args.model}",
        f"trainer.accelerator={accelerator}",
        "trainer.devices=1",
        f"trainer.max_steps={steps}",
        f"trainer.check_val_every_n_epoch={max(1, steps // 10)}",
        f"callbacks.image_logger.every_n_steps={max(1, steps // 10)}",
        f"method.num_samples={args.samples}" if method != "dip" else "method.num_samples=1",
        "logger=none",
        f"seed={args.seed}",
    ]
    if args.threads:
        overrides.append(f"num_threads={args.threads}")
    if args.prior_sigma is not None:
        overrides.append(f"prior.sigma={args.prior_sigma}")
    if method == "sgld":
        burn_in, sample_every = sgld_schedule(steps)
        overrides += [f"method.burn_in={burn_in}", f"method.sample_every={sample_every}"]
    return overrides + list(args.override)


def image_label(image: str) -> str:
    return image[len(PACKAGE_PREFIX) :] if image.startswith(PACKAGE_PREFIX) else Path(image).stem


def run_method(method: str, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    job_dir = out_dir / image_label(args.image) / method
    cfg = compose_config(job_overrides(method, args), job_dir)
    start = time.perf_counter()
    run(cfg)
    seconds = time.perf_counter() - start
    metrics = json.loads((job_dir / "metrics.json").read_text())
    curves = json.loads((job_dir / "curves.json").read_text())
    psnr, psnr_ema = curves["psnr"], curves["psnr_ema"]
    peak_step = max(range(len(psnr)), key=psnr.__getitem__)
    return {
        "image": image_label(args.image),
        "method": METHODS[method],
        "steps": metrics["steps"],
        "peak_psnr": psnr[peak_step],
        "peak_step": peak_step,
        "final_psnr": statistics.fmean(psnr[-FINAL_WINDOW:]),
        "peak_psnr_ema": max(psnr_ema),
        "final_psnr_ema": statistics.fmean(psnr_ema[-FINAL_WINDOW:]),
        "reported_psnr": metrics.get("psnr"),
        "ssim": metrics.get("ssim"),
        "input_psnr": metrics.get("baseline_psnr"),
        **{key: metrics.get(key) for key in COLUMNS if key.startswith("uce")},
        "nll": metrics.get("nll"),
        **{key: metrics.get(key) for key in COLUMNS if key.startswith("test_loglik")},
        "seconds": seconds,
    }


def fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    header = (
        "| method | steps | peak PSNR (step) | final PSNR | EMA peak / final | PSNR (reported) | SSIM "
        "| UCE ours / Laves / Toelle | UCE obs. Laves / Toelle | NLL | log-lik. p1 / p2 / p10 / full "
        "| seconds |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        key = next(k for k, v in METHODS.items() if v == r["method"])
        label = r["method"] + (f" ({ROW_NOTES[key]})" if key in ROW_NOTES else "")
        uces = " / ".join(fmt(r[k], 5) for k in ("uce", "uce_laves", "uce_toelle"))
        observed = " / ".join(fmt(r[k], 5) for k in ("uce_observation_laves", "uce_observation_toelle"))
        loglik = " / ".join(fmt(r[f"test_loglik_{k}"], 3) for k in ("p1", "p2", "p10", "full"))
        lines.append(
            f"| {label} | {r['steps']} | {fmt(r['peak_psnr'], 2)} ({r['peak_step']}) | "
            f"{fmt(r['final_psnr'], 2)} | {fmt(r['peak_psnr_ema'], 2)} / {fmt(r['final_psnr_ema'], 2)} | "
            f"{fmt(r['reported_psnr'], 2)} | {fmt(r['ssim'], 4)} | {uces} | {observed} | "
            f"{fmt(r['nll'], 3)} | {loglik} | {fmt(r['seconds'], 0)} |"
        )
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in COLUMNS})
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="image side (64 on a CPU, 256 for the paper)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of every method")
    parser.add_argument(
        "--steps-for",
        type=method_steps,
        nargs="*",
        default=[],
        metavar="METHOD=STEPS",
        help="a method's own step budget, e.g. mcdropout=10000 (default: --steps)",
    )
    parser.add_argument(
        "--image",
        default="camera",
        help="an image file, package:<name> (an image shipped in an installed package) or camera",
    )
    parser.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu")
    parser.add_argument(
        "--task", default="denoising", choices=("denoising", "super_resolution", "inpainting")
    )
    parser.add_argument("--model", default="skip_tiny", help="model config (skip_tiny, skip_light, skip)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--samples", type=int, default=25, help="Monte Carlo samples at evaluation")
    parser.add_argument(
        "--prior-sigma", type=float, default=None, help="MFVI prior sigma (default: the task's)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is best on a busy CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "outputs" / "paper_table")
    parser.add_argument("--csv", type=Path, default=None, help="default: results/paper_table_<device>.csv")
    parser.add_argument("override", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_args(argv)
    args.steps_for = dict(args.steps_for)
    unknown = sorted(set(args.steps_for) - set(METHODS))
    if unknown:
        parser.error(f"--steps-for: unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    return args


def method_steps(text: str) -> tuple[str, int]:
    """Parse METHOD=STEPS of --steps-for."""
    method, sep, steps = text.partition("=")
    if not sep or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"expected METHOD=STEPS with STEPS >= 1, got {text!r}")
    return method, int(steps)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    out_dir = args.out_dir / f"{args.device}_{args.size}"
    rows = []
    for method in args.methods:
        rows.append(run_method(method, args, out_dir))
        print(f"{METHODS[method]} done in {rows[-1]['seconds']:.0f} s", flush=True)
    budgets = ", ".join(f"{r['method']} {r['steps']}" for r in rows)
    print(
        f"\n{args.task}, {image_label(args.image)}, {args.size}x{args.size}, model={args.model}, "
        f"experiment=paper_{args.task}; noisy input {fmt(rows[0]['input_psnr'], 2)} dB; "
        f"steps per method: {budgets}\n"
    )
    print(markdown(rows))
    path = write_csv(rows, args.csv or RESULTS / f"paper_table_{args.device}.csv")
    print(f"\nCSV: {path}")
    return rows


if __name__ == "__main__":
    main()
