"""Deblurring: the blurry input, non-blind DIP with the true kernel, and blind DIP (SelfDeblur).

Every row is one image and one kernel; every number comes from jobs of the platform itself (the
configs `python launch.py task=deblurring ...` and `task=blind_deblurring ...` compose), run by
``dip_lightning.job.run.run`` on the same observation (same image, kernel, noise and seed):

* ``blurry``: the blurry image (the blind job's baseline, edge-replicated to the image's size);
* ``wiener``: the Wiener filter with the true kernel (the non-blind job's baseline);
* ``nonblind``: DIP with the true kernel, the upper bound of blind DIP under the same settings;
* ``blind``: DIP with the kernel fitted jointly (the operator's generator network).

Image PSNR/SSIM are the shift-aligned ones the jobs report (``psnr_aligned``: the best integer
shift within the kernel's radius, compared on the interior), for every column alike;
``blind_psnr_raw`` is the blind image's plain PSNR. ``kernel_psnr`` is the fitted kernel against
the true one. ``error_ratio`` is the blind image's squared error over the non-blind one's (Levin
et al.'s measure; 1 is as good as knowing the kernel). The goals checked at the end: blind DIP at
least 3 dB above the blurry input and within 2 dB of the non-blind bound.

    python benchmarks/deblur_table.py                    # 96 px, camera + the tuning X-ray, 2 kernels
    python benchmarks/deblur_table.py --steps 5000 --model skip   # the reference's budget and network
    python benchmarks/deblur_table.py --quick            # seconds: 32 px, 5 px kernel, a few steps

Prints a Markdown table and writes ``benchmarks/results/deblur_table_<device>.csv``; ``--figure
PATH`` adds a montage (per row: truth, blurry, non-blind DIP, blind DIP, true and fitted kernel).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from dip_lightning.config import compose_config  # noqa: E402
from dip_lightning.job.run import run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# The tuning chest X-ray of the MFVI-DIP code, kept outside the repository in ../shared beside the
# checkout (its README says whence); --files takes it from anywhere else.
XRAY = ROOT.parent / "shared" / "data" / "medical" / "BACTERIA-1351146-0006.jpg"
COLUMNS = (
    "image",
    "kernel",
    "blurry_psnr",
    "wiener_psnr",
    "nonblind_psnr",
    "blind_psnr",
    "blind_psnr_raw",
    "blind_ssim",
    "nonblind_ssim",
    "kernel_psnr",
    "gain_over_blurry",
    "gap_to_nonblind",
    "error_ratio",
    "steps",
    "nonblind_seconds",
    "blind_seconds",
)
GOAL_GAIN_DB = 3.0
GOAL_GAP_DB = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96, help="image side (a centre crop)")
    parser.add_argument("--kernel-size", type=int, default=13, help="side of the motion kernels")
    parser.add_argument("--kernel-seeds", type=int, nargs="+", default=[1, 2], help="motion kernel seeds")
    parser.add_argument("--noise", type=float, default=0.01, help="Gaussian noise std on [0, 1]")
    parser.add_argument("--steps", type=int, default=2000, help="training steps of every job")
    parser.add_argument("--model", default="skip_light", help="model config (skip_tiny, skip_light, skip)")
    parser.add_argument(
        "--kernel-lr",
        type=float,
        default=None,
        help="operator.kernel_lr of the blind jobs (default: the task's)",
    )
    parser.add_argument(
        "--switch",
        default=None,
        help="method.fidelity_switch.at of both jobs, a fraction or null (default: the task's)",
    )
    parser.add_argument("--camera", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--files", nargs="*", type=Path, default=None, help="image files (default: the X-ray)"
    )
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per job")
    parser.add_argument(
        "--reuse", action="store_true", help="read back jobs already run with the same overrides"
    )
    parser.add_argument(
        "--quick", action="store_true", help="32 px, a 5 px kernel, 4 steps, the tiny network"
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "outputs" / "benchmarks" / "deblur_table")
    parser.add_argument("--csv", type=Path, default=None, help="default: results/deblur_table_<device>.csv")
    parser.add_argument("--figure", type=Path, default=None, help="write a PNG montage of every row here")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_args(argv)
    if args.files is None:
        args.files = [XRAY] if XRAY.is_file() else []
    if args.quick:
        args.size, args.kernel_size, args.steps, args.model = 32, 5, 4, "skip_tiny"
        args.kernel_seeds = args.kernel_seeds[:1]
    return args


def images(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(label, data overrides) of every image: camera and the files, centre-cropped to --size."""
    chosen = [("camera", ["data=camera"])] if args.camera else []
    for path in args.files:
        chosen.append((path.stem, ["data=file", f"data.path={path.resolve()}", "data.channels=1"]))
    return chosen


def common_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    """The problem (kernel, noise, size) and run settings both jobs of a row share."""
    overrides = [
        "logger=none",
        "stopping=fixed",
        f"model={args.model}",
        f"data.size={args.size}",
        "operator.kernel=motion",
        f"operator.kernel_size={args.kernel_size}",
        f"operator.kernel_seed={seed}",
        f"noise.sigma={args.noise}",
        f"trainer.max_steps={args.steps}",
        "trainer.check_val_every_n_epoch=100000",  # evaluate once, at the end
        "checkpoint.every_n_steps=0",
    ]
    if args.switch is not None:
        overrides.append(f"method.fidelity_switch.at={args.switch}")
    if args.device == "gpu":
        overrides.append("trainer=gpu")
    if args.threads:
        overrides.append(f"num_threads={args.threads}")
    return [*overrides, *args.overrides]


def run_job(overrides: list[str], output_dir: Path, reuse: bool) -> dict[str, Any]:
    """One platform job's metrics.json; with ``reuse`` a finished job of the same overrides is read."""
    record = output_dir / "table_job.json"
    finished = (output_dir / "metrics.json").exists() and record.exists()
    if not (reuse and finished and json.loads(record.read_text()) == overrides):
        record.unlink(missing_ok=True)
        run(compose_config(overrides, output_dir))
        record.write_text(json.dumps(overrides))
    return json.loads((output_dir / "metrics.json").read_text())


def kernel_images(blind_dir: Path, overrides: list[str], side: int) -> list[Any]:
    """The true and the fitted kernel of a blind job (from its checkpoint), scaled to their peak."""
    import torch
    from PIL import Image

    from dip_lightning.job.run import build_problem

    operator = build_problem(compose_config(overrides, blind_dir / "figure")).operator
    state = torch.load(blind_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    prefix = "fitted_operator."
    operator.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    pictures = []
    for kernel in (operator.kernel, operator.current_kernel().detach()):
        values = (kernel / kernel.max()).clamp(0, 1).mul(255).byte().cpu().numpy()
        pictures.append(Image.fromarray(values).resize((side, side), Image.NEAREST))
    return pictures


def figure(rows: list[tuple[str, Path, list[str]]], path: Path, side: int = 160) -> None:
    """One line per row: truth, blurry, non-blind DIP, blind DIP, the true and the fitted kernel."""
    from PIL import Image

    gap = 4
    canvas = Image.new("L", (6 * (side + gap), len(rows) * (side + gap)), 255)
    for i, (_, where, blind_overrides) in enumerate(rows):
        files = [
            where / "blind" / "ground_truth.png",
            where / "blind" / "baseline.png",
            where / "nonblind" / "reconstruction.png",
            where / "blind" / "reconstruction.png",
        ]
        tiles = [Image.open(f).convert("L").resize((side, side)) for f in files]
        tiles += kernel_images(where / "blind", blind_overrides, side)
        for j, tile in enumerate(tiles):
            canvas.paste(tile, (j * (side + gap), i * (side + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def table_row(image: str, seed: int, nonblind: dict[str, Any], blind: dict[str, Any]) -> dict[str, Any]:
    row = {
        "image": image,
        "kernel": f"motion_{seed}",
        "blurry_psnr": blind["baseline_psnr_aligned"],
        "wiener_psnr": nonblind["baseline_psnr_aligned"],
        "nonblind_psnr": nonblind["psnr_aligned"],
        "blind_psnr": blind["psnr_aligned"],
        "blind_psnr_raw": blind["psnr"],
        "blind_ssim": blind["ssim_aligned"],
        "nonblind_ssim": nonblind["ssim_aligned"],
        "kernel_psnr": blind["kernel_psnr"],
        "steps": blind["steps"],
        "nonblind_seconds": nonblind["seconds"],
        "blind_seconds": blind["seconds"],
    }
    row["gain_over_blurry"] = row["blind_psnr"] - row["blurry_psnr"]
    row["gap_to_nonblind"] = row["nonblind_psnr"] - row["blind_psnr"]
    row["error_ratio"] = blind["mse_aligned"] / max(nonblind["mse_aligned"], 1e-30)
    return row


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    mean = {"image": "mean", "kernel": ""}
    for column in COLUMNS[2:]:
        mean[column] = sum(float(r[column]) for r in rows) / len(rows)
    return mean


def format_cell(value: Any, column: str) -> str:
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "-"
    if column == "error_ratio":
        return f"{value:.2f}"
    return f"{value:.1f}" if column.endswith("seconds") or column == "steps" else f"{value:.2f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    return harness.markdown(rows, COLUMNS, format_cell)


def goals(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        gain_ok = r["gain_over_blurry"] >= GOAL_GAIN_DB
        gap_ok = r["gap_to_nonblind"] <= GOAL_GAP_DB
        lines.append(
            f"{r['image']} {r['kernel']}: blind {r['gain_over_blurry']:+.2f} dB over blurry "
            f"({'met' if gain_ok else 'MISSED'} >= {GOAL_GAIN_DB}), {r['gap_to_nonblind']:.2f} dB below "
            f"non-blind ({'met' if gap_ok else 'MISSED'} <= {GOAL_GAP_DB})"
        )
    return lines


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    harness.write_csv(rows, COLUMNS, path, float_format=None)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    rows, pictured = [], []
    for image, data in images(args):
        for seed in args.kernel_seeds:
            shared = [*data, *common_overrides(args, seed)]
            where = args.out_dir / image / f"motion_{seed}"
            # Interleaved per row, so that machine load affects both jobs alike.
            nonblind = run_job(["task=deblurring", *shared], where / "nonblind", args.reuse)
            kernel_lr = [] if args.kernel_lr is None else [f"operator.kernel_lr={args.kernel_lr}"]
            blind_overrides = ["task=blind_deblurring", *shared, *kernel_lr]
            blind = run_job(blind_overrides, where / "blind", args.reuse)
            rows.append(table_row(image, seed, nonblind, blind))
            pictured.append((image, where, blind_overrides))
    if not rows:
        raise SystemExit("no image to measure: give --camera or --files")
    table = rows + ([mean_row(rows)] if len(rows) > 1 else [])
    print(markdown(table))
    print("\n".join(goals(rows)))
    path = args.csv or RESULTS / f"deblur_table_{args.device}{'_quick' if args.quick else ''}.csv"
    write_csv(table, path)
    print(f"written: {path}")
    if args.figure is not None:
        figure(pictured, args.figure)
        print(f"figure: {args.figure}")
    return table


if __name__ == "__main__":
    main()
