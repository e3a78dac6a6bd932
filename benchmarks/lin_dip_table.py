"""Linearised DIP against the other Bayesian DIPs on small sparse-view CT: test log-likelihood and PSNR.

The setting of Antorán et al.'s small-image experiments, at our scale: 32x32 ellipse phantoms,
parallel-beam CT with 10 or 20 angles and 5 % relative Gaussian noise, every method the platform's
``task=ct`` configuration (DIP+TV, cosine schedule, clipping) on the tiny skip network. Rows:

* ``DIP (s2=1)`` and ``DIP (MLL s2)``: the DIP+TV fit with an isotropic Gaussian predictive of
  variance 1, or of the noise variance lin-DIP's marginal likelihood found (the paper's two DIP
  baselines, read here as image-space variances);
* ``MC dropout`` and ``MFVI``: their own fits and ``--mc-samples`` predictive samples; the full
  covariance is the sample covariance shrunk to (C + diag C) / 2, as in the paper;
* ``lin-DIP (MLL)`` and ``lin-DIP (TV-MAP)``: the DIP+TV fit linearised, hyperparameters by type-II
  ML or MAP with TV-PredCP, exact predictive covariance. Both share one DIP fit, like the DIP rows.

Columns: PSNR of the reported image, the test log-likelihood of the ground truth per pixel under
the predictive distribution with patch size 1 (independent pixels) and with the full covariance,
the seconds of the method's fit and of its post-fit work. The check at the end is the paper's
ordering on the mean full-covariance log-likelihood: both lin-DIP rows above MC dropout, and MC
dropout above plain DIP (DIP (s2=1)).

The log-likelihood is computed here (:func:`log_likelihoods`) from each method's mean and
covariance or samples; the platform's evaluation reports only UCE and the patch-1 NLL.

    python benchmarks/lin_dip_table.py                      # 5 phantoms x 10/20 angles
    python benchmarks/lin_dip_table.py --phantoms 1 --steps 1000 --mll-iterations 500
    python benchmarks/lin_dip_table.py --quick              # seconds: wiring only

Prints a Markdown table and writes ``benchmarks/results/lin_dip_table_cpu.csv``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dip_lightning.config import build, compose_config  # noqa: E402
from dip_lightning.data.datamodule import SingleObservationDataModule  # noqa: E402
from dip_lightning.job.run import build_method, build_problem  # noqa: E402
from dip_lightning.metrics.image import psnr  # noqa: E402
from dip_lightning.metrics.loglik import (  # noqa: E402
    BlockCovariance,
    DenseCovariance,
    DiagonalCovariance,
    SampleCovariance,
    gaussian_loglik,
)

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = ("DIP (s2=1)", "DIP (MLL s2)", "MC dropout", "MFVI", "lin-DIP (MLL)", "lin-DIP (TV-MAP)")
SAMPLED = "lin-DIP (TV-MAP) sampled"
COLUMNS = (
    "angles",
    "phantom",
    "method",
    "psnr",
    "loglik_patch1",
    "loglik_full",
    "fit_s",
    "post_s",
    "noise_var",
    "true_noise_var",
    "residual_var",
)


def log_likelihoods(
    truth: torch.Tensor, mean: torch.Tensor, covariance: BlockCovariance
) -> tuple[float, float]:
    """Per-pixel test log-likelihood with patch size 1 and with the full covariance (the platform's
    metric, :mod:`dip_lightning.metrics.loglik`)."""
    return gaussian_loglik(truth, mean, covariance, 1), gaussian_loglik(truth, mean, covariance, None)


def config(method: str, angles: int, phantom: int, args: argparse.Namespace, extra: list[str]) -> Any:
    overrides = [
        "task=ct",
        f"method={method}",
        "data=ellipses",
        f"data.size={args.size}",
        f"data.seed={phantom}",
        f"operator.num_angles={angles}",
        f"model={args.model}",
        "logger=none",
        "stopping=fixed",
        f"trainer.max_steps={args.steps}",
        "trainer.check_val_every_n_epoch=1000000",
        *extra,
    ]
    return compose_config(overrides, Path(tempfile.mkdtemp(prefix="lin_dip_table_")))


def fit(cfg: Any) -> tuple[Any, float]:
    pl.seed_everything(int(cfg.seed), verbose=False)
    method = build_method(cfg, build_problem(cfg))
    trainer = build(cfg.trainer, logger=False, callbacks=[], limit_val_batches=0, enable_progress_bar=False)
    start = time.perf_counter()
    trainer.fit(method, datamodule=SingleObservationDataModule())
    return method, time.perf_counter() - start


def row(
    angles: int, phantom: int, name: str, mean, cov, truth, fit_s: float, post_s: float, noise=float("nan")
):
    patch1, full = log_likelihoods(truth, mean, cov)
    return {
        "angles": angles,
        "phantom": phantom,
        "method": name,
        "psnr": float(psnr(mean, truth).mean()),
        "loglik_patch1": patch1,
        "loglik_full": full,
        "fit_s": fit_s,
        "post_s": post_s,
        "noise_var": noise,
        "true_noise_var": float("nan"),
        "residual_var": float("nan"),
    }


def lin_dip_rows(angles: int, phantom: int, args: argparse.Namespace) -> list[dict]:
    extra = [
        f"method.mll.iterations={args.mll_iterations}",
        f"method.mll.lr={args.mll_lr}",
        "method.covariance=exact",
    ]
    method, fit_s = fit(config("lin_dip", angles, phantom, args, extra))
    truth = method.problem.ground_truth
    rows = []
    for label, hyperprior in (("lin-DIP (MLL)", "none"), ("lin-DIP (TV-MAP)", "tv_pred_cp")):
        method.hyperprior = hyperprior
        start = time.perf_counter()
        method.after_fit()
        post_s = time.perf_counter() - start
        r = method.result
        rows.append(
            row(
                angles,
                phantom,
                label,
                r["mean"],
                DenseCovariance(r["image_cov"]),
                truth,
                fit_s,
                post_s,
                r["noise_variance"],
            )
        )
    if args.sampling_check:
        rows += sampling_check(method, angles, phantom, args, truth, fit_s)
    mean = method.result["mean"]
    ones = torch.ones_like(mean, dtype=torch.float64)
    mll_noise = rows[0]["noise_var"]
    mll_cov = DiagonalCovariance(mll_noise * ones)
    rows.insert(0, row(angles, phantom, "DIP (MLL s2)", mean, mll_cov, truth, fit_s, 0.0, mll_noise))
    rows.insert(0, row(angles, phantom, "DIP (s2=1)", mean, DiagonalCovariance(ones), truth, fit_s, 0.0, 1.0))
    for r in rows:  # the noise variance of the simulation, and the fit's mean squared residual
        r["true_noise_var"] = method.problem.noise_std**2
        r["residual_var"] = method.result["residual_variance"]
    return rows


def sampling_check(
    method: Any, angles: int, phantom: int, args: argparse.Namespace, truth, fit_s: float
) -> list:
    """lin-DIP (TV-MAP) of the same fit on the sampling path (low-rank J for the hyperparameters,
    Matheron samples by preconditioned CG): its patch-1 log-likelihood against the exact path's."""
    method._linear_model, method.covariance, method.num_samples = None, "sampling", args.sampling_samples
    method.rank = args.sampling_rank
    start = time.perf_counter()
    try:
        method.after_fit()
    except Exception as error:  # report and keep the table's other rows
        print(f"sampling path failed: {error!r}", flush=True)
        return []
    post_s = time.perf_counter() - start
    r = method.result
    cov = DiagonalCovariance(r["epistemic"].double())
    out = row(angles, phantom, SAMPLED, r["mean"], cov, truth, fit_s, post_s, r["noise_variance"])
    out["loglik_full"] = float("nan")  # patch size 1 only: the samples' per-pixel variance
    return [out]


def sampled_row(method_name: str, label: str, angles: int, phantom: int, args: argparse.Namespace) -> dict:
    method, fit_s = fit(config(method_name, angles, phantom, args, []))
    start = time.perf_counter()
    with torch.no_grad():
        samples = torch.cat(
            [method.sample_outputs(min(64, args.mc_samples - s))[0] for s in range(0, args.mc_samples, 64)]
        )
    post_s = time.perf_counter() - start
    truth = method.problem.ground_truth
    return row(
        angles,
        phantom,
        label,
        samples.mean(dim=0, keepdim=True),
        SampleCovariance(samples),  # shrunk to (C + diag C) / 2, as the paper
        truth,
        fit_s,
        post_s,
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phantoms", type=int, default=5, help="ellipse seeds first..first+N-1")
    parser.add_argument("--first", type=int, default=0, help="the first ellipse seed")
    parser.add_argument("--angles", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--model", default="skip_tiny")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--mll-iterations", type=int, default=2000)
    parser.add_argument("--mll-lr", type=float, default=0.01)
    parser.add_argument("--mc-samples", type=int, default=256)
    parser.add_argument("--methods", nargs="+", default=["lin_dip", "mcdropout", "mfvi"])
    parser.add_argument(
        "--sampling-check",
        action="store_true",
        help="also run lin-DIP (TV-MAP) on the sampling path on the same fit (patch-1 log-likelihood)",
    )
    parser.add_argument("--sampling-samples", type=int, default=1024)
    parser.add_argument("--sampling-rank", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="1 phantom, 10 angles, 16 px, a few steps")
    parser.add_argument("--out", type=Path, default=RESULTS / "lin_dip_table_cpu.csv")
    parser.add_argument("--report", type=Path, nargs="+", help="only print the table of these CSV files")
    args = parser.parse_args(argv)
    if args.report:
        rows = [parse(r) for path in args.report for r in csv.DictReader(path.open())]
        report(rows)
        return rows
    if args.quick:
        args.phantoms, args.angles, args.size, args.steps, args.mll_iterations, args.mc_samples = (
            1,
            [10],
            16,
            5,
            5,
            16,
        )
    torch.set_num_threads(1)
    rows: list[dict] = []
    for angles in args.angles:
        for phantom in range(args.first, args.first + args.phantoms):
            start = time.perf_counter()
            if "lin_dip" in args.methods:
                rows += lin_dip_rows(angles, phantom, args)
            if "mcdropout" in args.methods:
                rows.append(sampled_row("mcdropout", "MC dropout", angles, phantom, args))
            if "mfvi" in args.methods:
                rows.append(sampled_row("mfvi", "MFVI", angles, phantom, args))
            print(
                f"[{angles} angles, phantom {phantom}: {(time.perf_counter() - start) / 60:.1f} min]",
                flush=True,
            )
            write(rows, args.out)
    report(rows)
    return rows


def parse(raw: dict[str, str]) -> dict:
    return {
        k: (v if k == "method" else int(v) if k in ("angles", "phantom") else float(v))
        for k, v in raw.items()
    }


def write(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def report(rows: list[dict]) -> None:
    print("| angles | method | PSNR | loglik p=1 | loglik full | fit s | post-fit s | n |")
    print("|---|---|---|---|---|---|---|---|")
    means: dict[tuple[int, str], float] = {}
    for angles in sorted({r["angles"] for r in rows}):
        for name in (*ROWS, SAMPLED):
            sel = [r for r in rows if r["angles"] == angles and r["method"] == name]
            if not sel:
                continue
            avg = {
                k: statistics.mean(r[k] for r in sel)
                for k in ("psnr", "loglik_patch1", "loglik_full", "fit_s", "post_s")
            }
            means[(angles, name)] = avg["loglik_full"]
            print(
                f"| {angles} | {name} | {avg['psnr']:.2f} | {avg['loglik_patch1']:.3f} | {avg['loglik_full']:.3f} "
                f"| {avg['fit_s']:.0f} | {avg['post_s']:.0f} | {len(sel)} |"
            )
    for angles in sorted({a for a, _ in means}):
        got = {name: means.get((angles, name)) for name in ROWS}
        if None in (got["lin-DIP (MLL)"], got["lin-DIP (TV-MAP)"], got["MC dropout"], got["DIP (s2=1)"]):
            continue
        per = {}
        for r in rows:
            if r["angles"] == angles:
                per.setdefault(r["phantom"], {})[r["method"]] = r["loglik_full"]
        complete = [p for p in per.values() if all(k in p for k in ROWS[:3] + ROWS[4:])]
        wins = sum(min(p["lin-DIP (MLL)"], p["lin-DIP (TV-MAP)"]) > p["MC dropout"] for p in complete)
        print(f"{angles} angles: both lin-DIP rows above MC dropout on {wins} of {len(complete)} phantoms")
        lin_above = min(got["lin-DIP (MLL)"], got["lin-DIP (TV-MAP)"]) > got["MC dropout"]
        mcdo_above = got["MC dropout"] > got["DIP (s2=1)"]
        print(
            f"{angles} angles, paper's ordering (full-covariance log-likelihood): lin-DIP above MC dropout: "
            f"{'yes' if lin_above else 'NO'}; MC dropout above DIP (s2=1): {'yes' if mcdo_above else 'NO'}"
        )


if __name__ == "__main__":
    main()
