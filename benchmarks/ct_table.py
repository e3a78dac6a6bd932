"""Sparse-view CT: FBP, DIP, DIP+TV, MFVI+TV and educated DIP on phantoms and real CT slices.

Every row is one job of the platform itself: the config `python launch.py task=ct ...` would
compose (``dip_lightning.config.compose_config``) run by ``dip_lightning.job.run.run``; the educated
DIP network is pretrained once by ``dip_lightning.pretrain.pretrain``, exactly what
`python -m dip_lightning.pretrain task=ct ...` does. All methods of an image share one
observation (128x128, 60 parallel-beam angles, 5% relative Gaussian noise by default).

Images come in groups, each reported with its own mean: ``phantoms`` (Shepp-Logan and seeded
random ellipses), ``real`` (``--slices``: the CT slices shipped with pydicom, resized to
``--size``) and ``files`` (``--files``: any image file, resized, e.g. tuning slices kept outside
the repository). ``--watch wmv emv`` lets those stopping criteria watch every DIP-family job
without stopping it (``StoppingMonitor``) and adds a row per criterion (``DIP+TV @wmv``): the
quality of the raw network output at the step that criterion detects, the step itself in
``detected_step``.

Columns: PSNR and SSIM of the reported image, the training steps, the job's wall time, the
step of a stopping rule's detection (a job that stopped early, or a watched criterion), and for
educated DIP ``steps_to_reach``: the first step at which its reported image (the output EMA)
is at least as good as DIP+TV's final image. The goals checked at the end:

* DIP+TV at least 4 dB above FBP (Baguer et al.: FBP 24.2 dB, DIP+TV 28.9 dB on 128x128
  ellipses with 30 angles and 2.5% noise);
* educated DIP reaching DIP+TV's PSNR within a third of DIP+TV's steps.

    python benchmarks/ct_table.py                                   # full scale (hours on a CPU)
    python benchmarks/ct_table.py --steps 300 --ellipses 1 --pretrain-steps 300 --pretrain-images 600
    python benchmarks/ct_table.py --device gpu --model skip --steps 5000 --pretrain-steps 20000
    python benchmarks/ct_table.py --size 64 --methods fbp dip dip_tv --slices ct_small ct_head

Prints a Markdown table and writes ``benchmarks/results/ct_table_<device>.csv``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from dip_lightning.config import compose_config  # noqa: E402
from dip_lightning.job.run import run  # noqa: E402
from dip_lightning.pretrain import pretrain  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# name -> (label, overrides); fbp is read from the baseline every job saves.
METHODS: dict[str, tuple[str, list[str]]] = {
    "fbp": ("FBP", []),
    "dip": ("DIP", ["method=dip", "regulariser=none"]),
    "dip_tv": ("DIP+TV", ["method=dip", "regulariser=tv"]),
    "mfvi_tv": ("MFVI+TV", ["method=mfvi", "regulariser=tv"]),
    "edip": ("EDIP", ["method=edip", "regulariser=tv"]),
}
COLUMNS = (
    "group",
    "image",
    "method",
    "psnr",
    "ssim",
    "steps",
    "seconds",
    "peak_psnr",
    "detected_step",
    "steps_to_reach",
)
# Real CT slices shipped with pydicom (dip_lightning.data.sources), resized to the table's size.
SLICES = ("ct_small", "ct_head")
GROUP_TITLES = {"phantoms": "Phantoms", "real": "Real CT slices", "files": "Image files"}
# Criteria that --watch can attach, with the settings of conf/stopping/<name>.yaml.
WATCHABLE = ("wmv", "emv", "discrepancy", "oracle")
GOAL_GAIN_DB = 4.0
GOAL_STEP_FRACTION = 1.0 / 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--angles", type=int, default=60, help="projection angles")
    parser.add_argument("--noise", type=float, default=0.05, help="relative Gaussian noise level")
    parser.add_argument("--ellipses", type=int, default=3, help="random-ellipse phantoms (seeds 0, 1, ...)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first ellipse phantom")
    parser.add_argument("--no-shepp-logan", action="store_true", help="leave out the Shepp-Logan phantom")
    parser.add_argument(
        "--slices", nargs="*", default=[], choices=SLICES, help="real CT slices from pydicom, resized"
    )
    parser.add_argument("--files", nargs="*", type=Path, default=[], help="image files (resized, grey)")
    parser.add_argument(
        "--watch",
        nargs="*",
        default=[],
        choices=WATCHABLE,
        help="stopping criteria that watch every DIP-family job and get a row each",
    )
    parser.add_argument("--steps", type=int, default=2000, help="steps of DIP, DIP+TV and MFVI+TV")
    parser.add_argument("--edip-steps", type=int, default=None, help="fine-tuning steps (default: steps / 3)")
    parser.add_argument(
        "--method-steps",
        nargs="+",
        default=[],
        metavar="NAME=STEPS",
        help="another step budget for some methods, e.g. dip=3000 mfvi_tv=2000",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the result of a job already run with the same overrides in --out-dir",
    )
    parser.add_argument("--pretrain-steps", type=int, default=3000, help="educated-DIP pretraining steps")
    parser.add_argument("--pretrain-images", type=int, default=4000, help="ellipse phantoms per epoch")
    parser.add_argument("--pretrain-batch", type=int, default=16, help="pretraining batch size")
    parser.add_argument(
        "--pretrain-crop", type=int, default=None, help="pretrain on random crops of this side"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="reuse this pretrained network")
    parser.add_argument("--model", default="skip_light", help="model config (skip_tiny, skip_light, skip)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per job")
    parser.add_argument("--jobs", type=int, default=1, help="images run in parallel processes")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "outputs" / "benchmarks" / "ct_table")
    parser.add_argument("--csv", type=Path, default=None, help="default: results/ct_table_<device>.csv")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_args(argv)
    if args.edip_steps is None:
        args.edip_steps = max(1, args.steps // 3)
    args.steps_of = {name: args.steps for name in METHODS}
    args.steps_of["edip"] = args.edip_steps
    for item in args.method_steps:
        name, _, value = item.partition("=")
        if name not in METHODS or name == "fbp" or not value.isdigit() or int(value) < 1:
            parser.error(f"--method-steps {item}: expected NAME=STEPS with NAME one of {list(METHODS)[1:]}")
        args.steps_of[name] = int(value)
    return args


def images(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(group, label, data overrides) of every test image: phantoms, real slices, files."""
    chosen = [] if args.no_shepp_logan else [("phantoms", "shepp_logan", ["data=shepp_logan"])]
    seeds = range(args.first_seed, args.first_seed + args.ellipses)
    chosen += [("phantoms", f"ellipses_{seed}", ["data=ellipses", f"data.seed={seed}"]) for seed in seeds]
    grey_resized = ["data.resize=true", "data.channels=1"]
    for name in args.slices:
        chosen.append(("real", name, ["data=package", f"data.name={name}", *grey_resized]))
    for path in args.files:
        chosen.append(("files", path.stem, ["data=file", f"data.path={path.resolve()}", *grey_resized]))
    return chosen


def common_overrides(args: argparse.Namespace) -> list[str]:
    """The CT problem and run settings every job shares."""
    overrides = [
        "task=ct",
        "logger=none",
        f"model={args.model}",
        f"data.size={args.size}",
        f"operator.num_angles={args.angles}",
        f"noise.sigma={args.noise}",
        "trainer.check_val_every_n_epoch=100000",  # evaluate once, at the end
    ]
    if args.device == "gpu":
        overrides.append("trainer=gpu")
    if args.threads:
        overrides.append(f"num_threads={args.threads}")
    return [*overrides, *args.overrides]


def monitor_node(watch: list[str], path: Path) -> dict[str, Any]:
    """A StoppingMonitor callback over the ``watch`` criteria with their conf/stopping settings."""
    criteria = {}
    for name in watch:
        criterion = compose_config(["task=ct", f"stopping={name}", "logger=none"], path.parent).stopping
        criteria[name] = dict(criterion.criterion)
    return {
        "_target_": "dip_lightning.stopping.monitor.StoppingMonitor",
        "path": str(path),
        "criteria": criteria,
    }


def run_job(
    overrides: list[str], output_dir: Path, reuse: bool = False, watch: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One platform job; its metrics.json and curves.json (with ``watch``: and ``monitor``).

    With ``reuse``, a finished job of the same overrides in ``output_dir`` (recorded in
    ``table_job.json``) is read back instead of run again, so a long table can be continued.
    ``watch`` names stopping criteria that a StoppingMonitor feeds from the job without stopping
    it; their results go to ``monitor.json`` and into the returned curves under ``monitor``.
    """
    record = output_dir / "table_job.json"
    key = [*overrides, *(f"watch={name}" for name in watch or [])]
    finished = (output_dir / "metrics.json").exists() and record.exists()
    if not (reuse and finished and json.loads(record.read_text()) == key):
        record.unlink(missing_ok=True)
        cfg = compose_config(overrides, output_dir)
        if watch:
            with open_dict(cfg):
                cfg.callbacks.stopping_monitor = monitor_node(watch, output_dir / "monitor.json")
        run(cfg)
        record.write_text(json.dumps(key))
    metrics = json.loads((output_dir / "metrics.json").read_text())
    curves = json.loads((output_dir / "curves.json").read_text())
    if watch:
        curves["monitor"] = json.loads((output_dir / "monitor.json").read_text())
    return metrics, curves


def pretrained_checkpoint(args: argparse.Namespace, data: list[str]) -> Path:
    """Pretrain once on simulated ellipse phantoms (same operator, noise and size) unless given."""
    if args.checkpoint is not None:
        return args.checkpoint
    path = args.out_dir / "pretrained" / "edip.pt"
    overrides = [
        *common_overrides(args),
        *data,
        f"method.checkpoint={path}",
        f"pretrain.max_steps={args.pretrain_steps}",
        f"pretrain.num_images={args.pretrain_images}",
        f"pretrain.batch_size={args.pretrain_batch}",
        f"pretrain.crop_size={args.pretrain_crop or 'null'}",
    ]
    summary = pretrain(compose_config(overrides, args.out_dir / "pretrained", config_name="pretrain"))
    print(
        f"pretraining: {summary['steps']} steps in {summary['seconds']:.0f} s, validation PSNR "
        f"{summary['val_psnr']:.2f} dB (FBP {summary['val_fbp_psnr']:.2f} dB)",
        flush=True,
    )
    return path


def steps_to_reach(curve: list[float | None], target: float) -> int | None:
    """Number of steps after which ``curve`` (one value per step) first reaches ``target``."""
    for index, value in enumerate(curve):
        if value is not None and value >= target:
            return index + 1
    return None


def reported_curve(metrics: dict[str, Any], curves: dict[str, Any]) -> list[float | None]:
    """The per-step PSNR of the image the run reports (the output EMA or the raw output)."""
    return curves["psnr_ema"] if metrics.get("reconstruction_source") == "ema" else curves["psnr"]


def watched_rows(group: str, label: str, method: str, monitor: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per watching criterion: the raw output at its detected step."""
    rows = []
    for name, entry in monitor["criteria"].items():
        rows.append(
            {
                **dict.fromkeys(COLUMNS),
                "group": group,
                "image": label,
                "method": f"{method} @{name}",
                "psnr": entry.get("detected_psnr"),
                "ssim": entry.get("detected_ssim"),
                "steps": monitor["steps"],
                "peak_psnr": monitor.get("peak_psnr"),
                "detected_step": entry["detected_step"],
            }
        )
    return rows


def run_image(
    args: argparse.Namespace, group: str, label: str, data: list[str], checkpoint: Path | None
) -> list[dict]:
    """All methods on one image; FBP comes from the first job's saved baseline."""
    rows: list[dict[str, Any]] = []
    results: dict[str, tuple[dict, dict]] = {}
    for name in [m for m in args.methods if m != "fbp"]:
        overrides = [*common_overrides(args), *data, *METHODS[name][1]]
        overrides.append(f"trainer.max_steps={args.steps_of[name]}")
        if name == "edip":
            overrides.append(f"method.checkpoint={checkpoint}")
        watch = [] if name == "edip" else list(args.watch)
        start = time.perf_counter()
        metrics, curves = run_job(overrides, args.out_dir / label / name, args.reuse, watch)
        print(f"{label} {name}: {metrics['psnr']:.2f} dB in {time.perf_counter() - start:.0f} s", flush=True)
        results[name] = (metrics, curves)
        rows.append(
            {
                "group": group,
                "image": label,
                "method": METHODS[name][0],
                "psnr": metrics["psnr"],
                "ssim": metrics["ssim"],
                "steps": metrics["steps"],
                "seconds": metrics["seconds"],
                "peak_psnr": metrics.get("peak_psnr"),
                "detected_step": metrics.get("detected_step") if metrics.get("stopped_early") else None,
                "steps_to_reach": None,
            }
        )
        if watch:
            rows += watched_rows(group, label, METHODS[name][0], curves["monitor"])
    if "fbp" in args.methods and results:
        metrics = next(iter(results.values()))[0]
        fbp = {
            "group": group,
            "image": label,
            "method": "FBP",
            "psnr": metrics["baseline_psnr"],
            "ssim": metrics["baseline_ssim"],
        }
        rows.insert(0, {**dict.fromkeys(COLUMNS), **fbp, "steps": 0})
    if "edip" in results and "dip_tv" in results:
        target = results["dip_tv"][0]["psnr"]
        reached = steps_to_reach(reported_curve(*results["edip"]), target)
        next(r for r in rows if r["method"] == "EDIP")["steps_to_reach"] = reached
    return rows


def mean_rows(rows: list[dict]) -> list[dict]:
    """The mean of every numeric column per method over the images of one group."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    means = []
    for method in methods:
        group = [r for r in rows if r["method"] == method]
        mean: dict[str, Any] = {"group": group[0]["group"], "image": "mean", "method": method}
        for column in COLUMNS[3:]:
            values = [r[column] for r in group if isinstance(r[column], int | float)]
            mean[column] = statistics.fmean(values) if len(values) == len(group) and values else None
        means.append(mean)
    return means


def format_cell(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if column in ("psnr", "peak_psnr"):
        return f"{value:.2f}"
    if column == "ssim":
        return f"{value:.3f}"
    if column == "seconds":
        return f"{value:.0f}"
    if column in ("steps", "detected_step", "steps_to_reach"):
        return f"{value:.0f}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    return harness.markdown(rows, COLUMNS[1:], format_cell)  # the group is the section's title


def grouped(rows: list[dict]) -> dict[str, list[dict]]:
    """Per-image rows by group (phantoms, real, files), in that order, each followed by its means."""
    groups: dict[str, list[dict]] = {}
    for name in GROUP_TITLES:
        members = [r for r in rows if r["group"] == name]
        if members:
            groups[name] = members + mean_rows(members)
    return groups


def goals(rows: list[dict], args: argparse.Namespace) -> list[str]:
    """The two targets of the benchmark, checked on the per-image rows."""
    lines = []
    by = {(r["image"], r["method"]): r for r in rows}
    for image in dict.fromkeys(r["image"] for r in rows):
        fbp, tv, edip = by.get((image, "FBP")), by.get((image, "DIP+TV")), by.get((image, "EDIP"))
        if fbp and tv:
            gain = tv["psnr"] - fbp["psnr"]
            verdict = "met" if gain >= GOAL_GAIN_DB else "not met"
            lines.append(f"{image}: DIP+TV - FBP = {gain:+.2f} dB (goal >= {GOAL_GAIN_DB:g} dB: {verdict})")
        if tv and edip:
            budget = math.floor(tv["steps"] * GOAL_STEP_FRACTION)
            reached = edip["steps_to_reach"]
            verdict = "met" if reached is not None and reached <= budget else "not met"
            target = f"DIP+TV's {tv['psnr']:.2f} dB"
            if reached is None:
                shown = f"does not reach {target} within {edip['steps']} steps"
            else:
                shown = f"reaches {target} after {reached} steps"
            lines.append(f"{image}: EDIP {shown} (goal <= {budget} = DIP+TV's {tv['steps']} / 3: {verdict})")
    return lines


def write_csv(rows: list[dict], path: Path) -> None:
    harness.write_csv(rows, COLUMNS, path, float_format=None)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    chosen = images(args)
    checkpoint = None
    if "edip" in args.methods:
        checkpoint = pretrained_checkpoint(args, chosen[0][2] if chosen else [])
    rows: list[dict] = []
    if args.jobs > 1 and len(chosen) > 1:
        context = multiprocessing.get_context("spawn")  # fresh processes: no shared Hydra or torch state
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            futures = [pool.submit(run_image, args, *image, checkpoint) for image in chosen]
            for future in futures:
                rows += future.result()
    else:
        for image in chosen:
            rows += run_image(args, *image, checkpoint)
    groups = grouped(rows)
    table = [row for members in groups.values() for row in members]
    pretraining = (
        f"pretrained network {args.checkpoint}"
        if args.checkpoint is not None
        else f"pretraining {args.pretrain_steps} steps x {args.pretrain_batch} images"
    )
    budgets = ", ".join(f"{name} {args.steps_of[name]}" for name in args.methods if name != "fbp")
    print(
        f"\nCT {args.size}x{args.size}, {args.angles} angles, {args.noise:.1%} noise, model {args.model}, "
        f"steps {budgets} ({pretraining})\n"
    )
    for name, members in groups.items():
        print(f"{GROUP_TITLES[name]}\n\n{markdown(members)}\n")
    print("\n".join(goals(rows, args)))
    path = args.csv or RESULTS / f"ct_table_{args.device}.csv"
    write_csv(table, path)
    print(f"\nwritten: {path}")
    return table


if __name__ == "__main__":
    main()
