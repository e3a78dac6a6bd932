"""The README's figures, made from real runs of the platform: ``python -m dip_lightning.figures``.

Four small jobs run through :func:`dip_lightning.job.run.run` (64x64 images, the CPU preset's network
``skip_light``, one thread; 10 to 20 minutes on two CPU cores) and their output files become two
PNGs:

* ``first_look.png``: one row per problem (denoising of ``camera``, sigma 0.1; sparse-view CT of
  the Shepp-Logan phantom, 60 angles, 5 % noise) with the ground truth, the measurement, plain DIP
  with its default early stopping, the MFVI posterior mean and MFVI's predictive standard
  deviation (its uncertainty map). The PSNR of each reconstruction is in its label.
* ``psnr_over_steps.png``: PSNR of DIP's raw output and of its EMA at every step of the denoising
  run, with the step the stopping rule detected and the step where it ended the run: the rise, the
  peak, the decline as DIP fits the noise, and where early stopping caught it.

Every number in the figures is read from the runs' ``metrics.json`` and ``curves.json``; the run
directories are kept under ``--runs`` for a look at everything else they hold.

    python -m dip_lightning.figures [--out docs/img] [--runs outputs/figures] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "img"
DEFAULT_RUNS = ROOT / "outputs" / "figures"


@dataclass(frozen=True)
class Job:
    """One run of the figure: its name and the command-line overrides it is composed from."""

    name: str
    overrides: tuple[str, ...]


def jobs(steps: int, mfvi_steps: int, ct_steps: int, model: str = "skip_light") -> list[Job]:
    """The four runs: DIP (its default stopping) and MFVI on denoising and on CT."""
    longest = max(steps, mfvi_steps, ct_steps)
    common = ("preset=small", f"model={model}", "logger=none", f"trainer.check_val_every_n_epoch={longest}")
    denoise = ("task=denoising", "data=camera", "data.resize=true")  # the whole photograph, 64x64
    ct = ("task=ct", "data=shepp_logan")
    mfvi = ("method=mfvi", "method.num_samples=25")
    return [
        Job("denoising_dip", (*common, *denoise, "method=dip", f"trainer.max_steps={steps}")),
        Job("denoising_mfvi", (*common, *denoise, *mfvi, f"trainer.max_steps={mfvi_steps}")),
        Job("ct_dip", (*common, *ct, "method=dip", f"trainer.max_steps={ct_steps}")),
        Job("ct_mfvi", (*common, *ct, *mfvi, f"trainer.max_steps={ct_steps}")),
    ]


def run_job(job: Job, runs: Path, threads: int) -> Path:
    """Run ``job`` into ``runs/<name>`` (again, so that the figure shows this code's results)."""
    from dip_lightning.config import compose_config
    from dip_lightning.job.run import run

    output_dir = runs / job.name
    cfg = compose_config([*job.overrides, f"num_threads={threads}"], output_dir)
    print(f"[figures] {job.name}: {' '.join(job.overrides)}", flush=True)
    run(cfg)
    return output_dir


def read_run(directory: Path) -> dict[str, Any]:
    """The arrays and numbers of one finished run directory."""
    metrics = json.loads((directory / "metrics.json").read_text())
    arrays = {
        name: np.load(directory / f"{name}.npy")
        for name in ("reconstruction", "observation", "ground_truth", "variance_total")
        if (directory / f"{name}.npy").is_file()
    }
    curves_file = directory / "curves.json"
    curves = json.loads(curves_file.read_text()) if curves_file.is_file() else {}
    return {"metrics": metrics, "arrays": arrays, "curves": curves}


def grey(array: np.ndarray) -> np.ndarray:
    """A (1, H, W) or (H, W) array as a 2-D image."""
    array = np.asarray(array, dtype=np.float64)
    return array[0] if array.ndim == 3 else array


def stretch(array: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (for the sinogram and the uncertainty map)."""
    low, high = float(array.min()), float(array.max())
    return np.zeros_like(array) if high <= low else (array - low) / (high - low)


def first_look(denoising: tuple[dict, dict], ct: tuple[dict, dict], path: Path) -> Path:
    """The image panel: truth, measurement, DIP, MFVI mean, MFVI std, one row per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("denoising, sigma 0.1", *denoising), ("sparse-view CT, 60 angles", *ct)]
    fig, axes = plt.subplots(2, 5, figsize=(10.0, 4.6), dpi=80)
    for row, (title, dip, mfvi) in enumerate(rows):
        truth = grey(dip["arrays"]["ground_truth"])
        observation = grey(dip["arrays"]["observation"])
        std = np.sqrt(np.clip(grey(mfvi["arrays"]["variance_total"]), 0, None))
        is_image = observation.shape == truth.shape
        dm, mm = dip["metrics"], mfvi["metrics"]
        stop = f"step {dm['detected_step']}" if dm.get("reports_detection") else f"{dm['steps']} steps"
        panels = [
            (truth, "ground truth", "gray", (0, 1)),
            (
                observation if is_image else stretch(observation),
                f"measurement\n{dm['baseline_psnr']:.2f} dB"
                if is_image
                else f"sinogram (FBP {dm['baseline_psnr']:.2f} dB)",
                "gray",
                (0, 1),
            ),
            (
                grey(dip["arrays"]["reconstruction"]),
                f"DIP, {dm['criterion']} ({stop})\n{dm['psnr']:.2f} dB",
                "gray",
                (0, 1),
            ),
            (grey(mfvi["arrays"]["reconstruction"]), f"MFVI mean\n{mm['psnr']:.2f} dB", "gray", (0, 1)),
            (std, "MFVI std (uncertainty)", "inferno", (0, float(std.max()) or 1.0)),
        ]
        for column, (image, label, cmap, limits) in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(image, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest")
            axis.set_title(label, fontsize=9)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row, 0].set_ylabel(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def psnr_over_steps(dip: dict, path: Path) -> Path:
    """PSNR of DIP's output and EMA per step, with the detected and the stopping step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves, m = dip["curves"], dip["metrics"]
    fig, axis = plt.subplots(figsize=(6.4, 3.4), dpi=80)
    axis.plot(curves["psnr"], lw=0.8, color="tab:blue", alpha=0.7, label="DIP output")
    axis.plot(curves["psnr_ema"], lw=1.2, color="tab:orange", label="output EMA")
    axis.axhline(m["baseline_psnr"], color="grey", lw=0.8, ls=":", label="noisy measurement")
    detected = m.get("detected_step")
    if detected is not None and m.get("reports_detection"):
        axis.axvline(
            detected, color="tab:green", lw=1.0, label=f"{m['criterion']} detection (step {detected})"
        )
        axis.plot([detected], [m["psnr"]], "o", color="tab:green", label=f"reported: {m['psnr']:.2f} dB")
    if m.get("stopped_early"):
        axis.axvline(
            m["stop_step"], color="tab:red", lw=1.0, ls="--", label=f"stopped (step {m['stop_step']})"
        )
    axis.set_xlabel("step")
    axis.set_ylabel("PSNR (dB)")
    axis.set_title("DIP denoising: fits the image, then the noise; early stopping keeps the peak", fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    axis.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG with a reduced palette, so the committed files stay small."""
    from PIL import Image

    from dip_lightning.viz.plots import figure_to_array

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = figure_to_array(fig)
    Image.fromarray(pixels[..., :3]).quantize(colors=128).save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the PNGs go")
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="where the run directories go")
    parser.add_argument("--steps", type=int, default=2000, help="DIP's step budget")
    parser.add_argument("--mfvi-steps", type=int, default=1500, help="MFVI's step budget on denoising")
    parser.add_argument("--ct-steps", type=int, default=1000, help="step budget of both CT runs")
    parser.add_argument("--model", default="skip_light", help="network config of every run")
    parser.add_argument("--only", nargs="*", default=None, help="run only these jobs (the rest: --reuse)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--reuse", action="store_true", help="draw from the run directories already in --runs"
    )
    args = parser.parse_args(argv)
    for name in ("steps", "mfvi_steps", "ct_steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    logging.getLogger("dip_lightning").setLevel(logging.WARNING)
    results = {}
    for job in jobs(args.steps, args.mfvi_steps, args.ct_steps, args.model):
        directory = args.runs / job.name
        if args.only is not None and job.name not in args.only:
            continue
        if not (args.reuse and (directory / "metrics.json").is_file()):
            directory = run_job(job, args.runs, args.threads)
        results[job.name] = read_run(directory)
    if args.only is not None:
        return  # a part of the runs; draw later with --reuse
    written = [
        first_look(
            (results["denoising_dip"], results["denoising_mfvi"]),
            (results["ct_dip"], results["ct_mfvi"]),
            args.out / "first_look.png",
        ),
        psnr_over_steps(results["denoising_dip"], args.out / "psnr_over_steps.png"),
    ]
    for path in written:
        print(f"[figures] wrote {path} ({path.stat().st_size // 1024} KB)", flush=True)


if __name__ == "__main__":
    main()
