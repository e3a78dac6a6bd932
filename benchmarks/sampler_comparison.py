"""GP Bayesian optimisation against TPE and random search for MFVI-DIP's prior sigma, on a cache.

Step 1 (``cache``) runs MFVI-DIP denoising once for every prior sigma of a log grid on each
tuning image (64x64 centre crop, ``model=skip_tiny``, ``validation_fraction=0.1`` so that every
run reports both the ground-truth PSNR and the measurement-only ``heldout_mse``) and appends
each result to a JSON-lines cache. It is resumable: finished (image, sigma) pairs are skipped.

Step 2 (``compare``) replays searches against that cache, so they cost nothing and are exact:
a proposed sigma scores the cached PSNR of the nearest grid point (nearest in log sigma). For
GPSampler (the paper's optimiser), TPE, random search and the paper's protocol (four enqueued
points at 0.075/0.175/0.275/0.375, then GP-EI on [0.01, 0.4]) it prints the best PSNR after 4, 8
and 12 trials, mean ± std over 3 sampler seeds, and writes a CSV.

Step 3 (``objective``) compares, per image, the sigma chosen by ``heldout_mse`` (what a user
without ground truth can optimise) with the one chosen by PSNR on the same ``--points`` grid,
and the PSNR each reaches. (A 6-point grid is every third point of the 16-point one.)

    python benchmarks/sampler_comparison.py cache --data-dir <tuning images> --images xray --points 16 --steps 1000
    python benchmarks/sampler_comparison.py cache --data-dir <tuning images> --images oct ultrasound --points 6 --steps 1000
    python benchmarks/sampler_comparison.py compare
    python benchmarks/sampler_comparison.py objective --points 6

The cache records the git commit it was measured at: method defaults change between commits.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "sampler_cache.jsonl"
# Tuning images of the MFVI-DIP work (denoising): the chest X-ray, a retinal OCT, and a fetal
# ultrasound with multiplicative speckle noise as that work used for ultrasound.
IMAGES = {
    "xray": ("BACTERIA-1351146-0006.jpg", ["noise=gaussian"]),
    "oct": ("CNV-9997680-30.png", ["noise=gaussian"]),
    "ultrasound": ("081_HC.jpg", ["noise=speckle"]),
}
LOW, HIGH = 0.01, 0.5
CHECKPOINTS = (4, 8, 12)
SEEDS = (0, 1, 2)


def grid(points: int) -> list[float]:
    """``points`` log-spaced prior sigmas in [LOW, HIGH], rounded for readable cache keys."""
    step = (math.log(HIGH) - math.log(LOW)) / (points - 1)
    return [float(f"{math.exp(math.log(LOW) + i * step):.4g}") for i in range(points)]


def commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def read_cache(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_one(image: Path, extra: list[str], sigma: float, steps: int) -> dict[str, Any]:
    """One MFVI-DIP run in this process (the platform's real job), its metrics."""
    from dip_lightning.config import compose_config
    from dip_lightning.job.run import run

    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config(
            [
                "task=denoising",
                "method=mfvi",
                *extra,
                "data=file",
                f"data.path={image}",
                "data.size=64",
                "model=skip_tiny",
                f"trainer.max_steps={steps}",
                "trainer.check_val_every_n_epoch=100000",
                "logger=none",
                "num_threads=1",
                "validation_fraction=0.1",
                f"prior.sigma={sigma}",
            ],
            out,
        )
        run(cfg)
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    return {k: metrics.get(k) for k in ("status", "psnr", "ssim", "heldout_mse", "uce", "seconds", "steps")}


def build_cache(args: argparse.Namespace) -> None:
    done = {(r["image"], r["sigma"]) for r in read_cache(args.cache)}
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    at = commit()
    for name in args.images:
        filename, extra = IMAGES[name]
        for sigma in grid(args.points):
            if (name, sigma) in done:
                continue
            start = time.perf_counter()
            row = {
                "image": name,
                "sigma": sigma,
                **run_one(args.data_dir / filename, extra, sigma, args.steps),
            }
            row.update(commit=at, wall=round(time.perf_counter() - start, 1), grid_steps=args.steps)
            with args.cache.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(
                f"{name} sigma={sigma:.4g}: psnr {row['psnr']:.2f} heldout_mse {row['heldout_mse']:.5f} ({row['wall']} s)",
                flush=True,
            )


def table(rows: list[dict[str, Any]], image: str) -> dict[float, dict[str, Any]]:
    found = {r["sigma"]: r for r in rows if r["image"] == image and r.get("status") == "completed"}
    if not found:
        raise SystemExit(f"no cached runs for image '{image}': run the cache step first")
    return found


def nearest(cached: dict[float, Any], sigma: float) -> float:
    return min(cached, key=lambda s: abs(math.log(s) - math.log(sigma)))


def searchers() -> dict[str, Callable[[int], tuple[Any, dict[str, Any], list[dict[str, float]]]]]:
    """Each search: (sampler for a seed, search space, points enqueued first)."""
    import optuna
    from optuna.distributions import FloatDistribution

    log_space = {"prior.sigma": FloatDistribution(LOW, HIGH, log=True)}
    paper_space = {"prior.sigma": FloatDistribution(0.01, 0.4)}
    paper_points = [{"prior.sigma": s} for s in (0.075, 0.175, 0.275, 0.375)]
    return {
        "gp": lambda seed: (optuna.samplers.GPSampler(seed=seed, n_startup_trials=4), log_space, []),
        "tpe": lambda seed: (optuna.samplers.TPESampler(seed=seed, n_startup_trials=4), log_space, []),
        "random": lambda seed: (optuna.samplers.RandomSampler(seed=seed), log_space, []),
        "gp_paper": lambda seed: (
            optuna.samplers.GPSampler(seed=seed, n_startup_trials=4),
            paper_space,
            paper_points,
        ),
    }


def replay(
    make: Callable[[int], Any], seed: int, cached: dict[float, dict[str, Any]], trials: int
) -> list[float]:
    """Best cached PSNR so far after each trial of one search."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler, space, points = make(seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for point in points:
        study.enqueue_trial(point)
    best, curve = -math.inf, []
    for _ in range(trials):
        trial = study.ask(space)
        value = float(cached[nearest(cached, trial.params["prior.sigma"])]["psnr"])
        study.tell(trial, value)
        best = max(best, value)
        curve.append(best)
    return curve


def compare(args: argparse.Namespace) -> None:
    rows = read_cache(args.cache)
    cached = table(rows, args.image)
    optimum = max(r["psnr"] for r in cached.values())
    print(
        f"{args.image}: {len(cached)} cached sigmas, grid optimum {optimum:.2f} dB at sigma "
        f"{max(cached, key=lambda s: cached[s]['psnr']):.4g}; commit {rows[0].get('commit')}"
    )
    out_rows = []
    header = "| search | " + " | ".join(f"best after {n}" for n in CHECKPOINTS) + " |"
    print(header + "\n|---|" + "---|" * len(CHECKPOINTS))
    for name, make in searchers().items():
        curves = [replay(make, seed, cached, max(CHECKPOINTS)) for seed in SEEDS[: args.seeds]]
        cells = []
        for n in CHECKPOINTS:
            values = [c[n - 1] for c in curves]
            mean, std = statistics.mean(values), statistics.stdev(values)
            cells.append(f"{mean:.2f} ± {std:.2f}")
            out_rows.append(
                {
                    "search": name,
                    "trials": n,
                    "mean": round(mean, 3),
                    "std": round(std, 3),
                    "per_seed": " ".join(f"{v:.2f}" for v in values),
                }
            )
        print(f"| {name} | " + " | ".join(cells) + " |")
    path = args.out / f"sampler_comparison_{args.image}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(out_rows[0]))
        writer.writeheader()
        writer.writerows(out_rows)
    print(f"written {path}")


def objective(args: argparse.Namespace) -> None:
    rows = read_cache(args.cache)
    print("| image | sigma by PSNR | its PSNR | sigma by heldout_mse | its PSNR | PSNR lost |")
    print("|---|---|---|---|---|---|")
    points = set(grid(args.points))
    found: list[dict[str, Any]] = []
    for name in args.images:
        cached = {s: r for s, r in table(rows, name).items() if s in points}
        if len(cached) < len(points):
            print(f"| {name} | (only {len(cached)} of the {len(points)} grid points cached) |")
            continue
        by_psnr = max(cached, key=lambda s: cached[s]["psnr"])
        by_mse = min(cached, key=lambda s: cached[s]["heldout_mse"])
        lost = cached[by_psnr]["psnr"] - cached[by_mse]["psnr"]
        print(
            f"| {name} | {by_psnr:.4g} | {cached[by_psnr]['psnr']:.2f} | {by_mse:.4g} | "
            f"{cached[by_mse]['psnr']:.2f} | {lost:.2f} |"
        )
        found.append(
            {
                "image": name,
                "grid_points": len(points),
                "sigma_by_psnr": by_psnr,
                "psnr": cached[by_psnr]["psnr"],
                "sigma_by_heldout_mse": by_mse,
                "psnr_of_that_sigma": cached[by_mse]["psnr"],
                "psnr_lost": round(lost, 3),
            }
        )
    if found:
        path = args.out / f"objective_comparison_{args.points}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(found[0]))
            writer.writeheader()
            writer.writerows(found)
        print(f"written {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("cache", "compare", "objective"))
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where compare writes its CSV")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding the tuning images (for cache): the test data of the MFVI-DIP repository, "
        "maltetoelle/mfvi-dip, data/bayesian/ (BACTERIA-1351146-0006.jpg, CNV-9997680-30.png, 081_HC.jpg)",
    )
    parser.add_argument("--images", nargs="+", default=list(IMAGES), choices=list(IMAGES))
    parser.add_argument("--image", default="xray", choices=list(IMAGES), help="image for compare")
    parser.add_argument("--points", type=int, default=16, help="grid points in [0.01, 0.5] (log)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument(
        "--seeds", type=int, default=len(SEEDS), choices=range(2, len(SEEDS) + 1), help="sampler seeds"
    )
    args = parser.parse_args(argv)
    if args.step == "cache":
        missing = [
            IMAGES[n][0]
            for n in args.images
            if args.data_dir is None or not (args.data_dir / IMAGES[n][0]).is_file()
        ]
        if missing:
            parser.error(f"--data-dir must be a folder holding {', '.join(missing)} (see --help)")
    {"cache": build_cache, "compare": compare, "objective": objective}[args.step](args)


if __name__ == "__main__":
    main()
