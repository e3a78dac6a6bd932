"""Report of a sweep or multirun: ``python -m dip_lightning.sweeps.report <dir> [--out DIR]``.

Writes into ``<dir>/report`` (or ``--out``):

* ``report.md``: counts by status, the best job, a table of every job (swept parameters, status,
  objective and main metrics, seconds), mean ± std over seeds, and the plots below;
* ``jobs.csv``: one row per job with every override, status and scalar metric; ``seeds.csv`` for
  jobs that differ only in ``seed``;
* ``objective_vs_<param>.png``: the objective against each swept parameter;
* ``history.png``: the objective per trial in order, with the best so far (Optuna's trial order
  when the study database is in the directory, else the job order);
* ``psnr_curves.png``: PSNR over training steps of every job (``curves.json``);
* ``best.png``: the best job's ground truth, observation, reconstruction, uncertainty and error;
* ``pareto.png`` for two objectives;
* Optuna's ``optuna_history.png``, ``optuna_parallel_coordinate.png`` and
  ``optuna_importances.png`` when the directory holds (or points to) the study.

Jobs that diverged or failed are listed with their status and drawn as red crosses; jobs without
``metrics.json`` (killed or crashed) are listed as missing, so partial sweeps can be reported.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from dip_lightning.sweeps.collect import (
    Job,
    SeedGroup,
    StudyInfo,
    best_job,
    collect_jobs,
    constant_overrides,
    load_study,
    objective_of,
    pareto_front,
    parse_value,
    read_json,
    seed_groups,
    varying_keys,
)
from dip_lightning.sweeps.optuna_plots import optuna_plots
from dip_lightning.viz.plots import save_figure

TABLE_METRICS = ("psnr", "ssim", "uce", "nll", "heldout_mse", "peak_psnr", "steps", "seconds")
BEST_PANELS = (
    ("ground_truth", "ground truth"),
    ("observation", "observation"),
    ("baseline", "baseline"),
    ("reconstruction", "reconstruction"),
    ("variance_total", "variance"),
    ("error_squared", "squared error"),
)
STATUS_ORDER = ("completed", "diverged", "failed", "interrupted", "missing")


@dataclass
class Report:
    """What was found and written."""

    root: Path
    out: Path
    jobs: list[Job]
    metrics: list[str]
    directions: list[str]
    params: list[str]
    study: StudyInfo | None
    best: Job | None
    groups: list[SeedGroup]
    files: list[Path] = field(default_factory=list)


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return (
            f"{value:.4g}"
            if abs(value) < 1e-3 or abs(value) >= 1e4
            else f"{value:.4f}".rstrip("0").rstrip(".")
        )
    return str(value)


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


# ---------------------------------------------------------------------- tables
def table_metrics(metrics: Sequence[str], jobs: Sequence[Job]) -> list[str]:
    names = list(metrics) + [m for m in TABLE_METRICS if m not in metrics]
    return [m for m in names if any(j.metric(m) is not None for j in jobs)]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    return path


def jobs_csv(report: Report) -> Path:
    keys: list[str] = []
    for job in report.jobs:
        keys += [k for k in job.overrides if k not in keys]
    scalar: list[str] = []
    for job in report.jobs:
        scalar += [
            k
            for k, v in job.metrics.items()
            if isinstance(v, int | float | bool) and k not in scalar and k != "status"
        ]
    header = ["job", "trial", "status", *keys, *scalar, "reason"]
    rows = [
        [
            job.name,
            job.trial,
            job.status,
            *[job.overrides.get(k) for k in keys],
            *[job.metrics.get(k) for k in scalar],
            job.metrics.get("reason"),
        ]
        for job in report.jobs
    ]
    return write_csv(report.out / "jobs.csv", header, rows)


def seeds_csv(report: Report, metrics: Sequence[str]) -> Path:
    keys = sorted({k for g in report.groups for k in g.params})
    header = [*keys, "n", *[f"{m}_{s}" for m in metrics for s in ("mean", "std")]]
    rows = []
    for group in report.groups:
        row: list[Any] = [group.params.get(k) for k in keys] + [len(group.jobs)]
        for m in metrics:
            mean, std, _ = group.stats.get(m, (None, None, 0))
            row += [mean, std]
        rows.append(row)
    return write_csv(report.out / "seeds.csv", header, rows)


# ---------------------------------------------------------------------- plots
def new_figure(size: tuple[float, float], rows: int = 1) -> tuple[Figure, list[Any]]:
    """A headless figure (Agg canvas, no pyplot state) with ``rows`` stacked axes."""
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]


def numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) for v in values)


def below(values: Sequence[float]) -> float:
    """A height under every scored value, where the unscored jobs are drawn."""
    if not values:
        return 0.0
    low, high = min(values), max(values)
    return low - max(0.1 * (high - low), 0.05 * abs(low), 1e-3)


def log_scale(report: Report, param: str, values: Sequence[float]) -> bool:
    """Log axis for a parameter Optuna sampled on a log scale, or positive values over a decade."""
    if report.study is not None:
        for trial in report.study.trials:
            distribution = trial.distributions.get(param)
            if distribution is not None:
                return "Log" in type(distribution).__name__
    return all(x > 0 for x in values) and max(values) / min(values) >= 10


def objective_vs_param(report: Report, param: str) -> Path | None:
    jobs = [j for j in report.jobs if param in j.overrides]
    if not jobs:
        return None
    fig, axes = new_figure((5.5, 3.2 * len(report.metrics)), rows=len(report.metrics))
    xs_all = [parse_value(j.overrides[param]) for j in jobs]
    categorical = not numeric(xs_all)
    categories = sorted({str(x) for x in xs_all}) if categorical else []
    for ax, metric, direction in zip(axes, report.metrics, report.directions):
        good = [(parse_value(j.overrides[param]), j.metric(metric)) for j in jobs if j.completed]
        good = [(x, y) for x, y in good if y is not None]
        bad = [parse_value(j.overrides[param]) for j in jobs if not j.completed]
        position = (lambda x: categories.index(str(x))) if categorical else (lambda x: x)
        if good:
            ax.scatter([position(x) for x, _ in good], [y for _, y in good], label="completed")
        if bad:
            heights = [below([y for _, y in good])] * len(bad)
            ax.scatter(
                [position(x) for x in bad],
                heights,
                marker="x",
                color="red",
                label="diverged/failed (not scored)",
            )
        if categorical:
            ax.set_xticks(range(len(categories)), categories, rotation=30)
        elif log_scale(report, param, xs_all):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(param)
        ax.set_ylabel(f"{metric} ({direction})")
        ax.grid(True, alpha=0.3)
        if bad:
            ax.legend(loc="best", fontsize="small")
    return save_figure(fig, report.out / f"objective_vs_{safe_name(param)}.png")


def history(report: Report) -> Path | None:
    """Objective per trial in order, with the best value so far."""
    ordered = sorted(
        report.jobs, key=lambda j: (j.trial if j.trial is not None else report.jobs.index(j), j.name)
    )
    fig, axes = new_figure((6.0, 3.2 * len(report.metrics)), rows=len(report.metrics))
    drawn = False
    for ax, metric, direction in zip(axes, report.metrics, report.directions):
        xs, ys, best, bad = [], [], [], []
        current: float | None = None
        for index, job in enumerate(ordered):
            x = job.trial if job.trial is not None else index
            y = job.metric(metric) if job.completed else None
            if y is None:
                bad.append(x)
                continue
            better = current is None or (y > current if direction == "maximize" else y < current)
            current = y if better else current
            xs.append(x)
            ys.append(y)
            best.append(current)
        if xs:
            ax.plot(xs, ys, "o", label=metric)
            ax.step(xs, best, where="post", label="best so far")
            drawn = True
        if bad:
            ax.scatter(bad, [below(ys)] * len(bad), marker="x", color="red", label="diverged/failed/missing")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial" if report.study is not None else "job")
        ax.set_ylabel(f"{metric} ({direction})")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    if not drawn and not any(not j.completed for j in ordered):
        return None
    return save_figure(fig, report.out / "history.png")


def label(job: Job, params: Sequence[str]) -> str:
    parts = [f"{p.split('.')[-1]}={fmt(parse_value(job.overrides[p]))}" for p in params if p in job.overrides]
    return f"{job.name}: " + ", ".join(parts) if parts else job.name


def psnr_curves(report: Report) -> Path | None:
    fig, (ax,) = new_figure((6.5, 4.0))
    count = 0
    for job in report.jobs:
        curves = read_json(job.path / "curves.json")
        values = curves.get("psnr")
        if not isinstance(values, list) or not values:
            continue
        ys = [float(v) if isinstance(v, int | float) else math.nan for v in values]
        style = "-" if job.completed else ":"
        ax.plot(range(1, len(ys) + 1), ys, style, linewidth=1.0, label=label(job, report.params))
        count += 1
    if count == 0:
        return None
    if count <= 12:
        ax.legend(loc="best", fontsize="x-small")
    ax.set_xlabel("step")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("PSNR during training (dotted: diverged/failed)")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, report.out / "psnr_curves.png")


def pareto_plot(report: Report) -> Path | None:
    if len(report.metrics) != 2:
        return None
    m0, m1 = report.metrics
    done = [j for j in report.jobs if j.completed and j.metric(m0) is not None and j.metric(m1) is not None]
    if not done:
        return None
    front = pareto_front(report.jobs, report.metrics, report.directions)
    fig, (ax,) = new_figure((5.0, 4.0))
    ax.scatter([j.metric(m0) for j in done], [j.metric(m1) for j in done], label="trials", alpha=0.6)
    front = sorted(front, key=lambda j: j.metric(m0))
    ax.plot([j.metric(m0) for j in front], [j.metric(m1) for j in front], "r-o", label="Pareto front")
    ax.set_xlabel(f"{m0} ({report.directions[0]})")
    ax.set_ylabel(f"{m1} ({report.directions[1]})")
    ax.legend(loc="best")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, report.out / "pareto.png")


def best_panels(report: Report) -> Path | None:
    """The best job's images side by side (read from its PNGs), as best.png."""
    from PIL import Image

    from dip_lightning.viz.maps import side_by_side

    job = report.best
    if job is None:
        return None
    images, labels = [], []
    for stem, text in BEST_PANELS:
        path = job.path / f"{stem}.png"
        if path.is_file():
            image = Image.open(path).convert("RGB")
            if image.width < 128:
                scale = max(1, 128 // image.width)
                image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
            images.append(np.asarray(image))
            labels.append(text)
    if not images:
        return None
    target = report.out / "best.png"
    Image.fromarray(side_by_side(images, labels)).save(target)
    return target


# ---------------------------------------------------------------------- markdown
def status_counts(jobs: Sequence[Job]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    order = {s: i for i, s in enumerate(STATUS_ORDER)}
    return dict(sorted(counts.items(), key=lambda kv: order.get(kv[0], 99)))


def markdown(report: Report, images: list[Path]) -> str:
    jobs, params = report.jobs, report.params
    metrics = table_metrics(report.metrics, jobs)
    counts = ", ".join(f"{n} {s}" for s, n in status_counts(jobs).items())
    objective = ", ".join(f"{m} ({d})" for m, d in zip(report.metrics, report.directions))
    lines = [f"# Sweep report: {report.root}", "", f"{len(jobs)} jobs: {counts}. Objective: {objective}."]
    if report.study is not None:
        lines.append(f"Optuna study `{report.study.name}` ({len(report.study.trials)} trials).")
    constant = constant_overrides(jobs)
    if constant:
        lines += ["", "Fixed overrides: " + " ".join(f"`{k}={v}`" for k, v in constant.items())]
    if report.best is not None:
        best = report.best
        settings = ", ".join(
            f"{p}={fmt(parse_value(best.overrides[p]))}" for p in params if p in best.overrides
        )
        value = best.metric(report.metrics[0])
        lines += [
            "",
            "## Best job",
            "",
            f"Job `{best.name}` ({settings}): {report.metrics[0]} = {fmt(value)}.",
        ]
        lines.append(f"Outputs: `{best.path}`.")
        if len(report.metrics) > 1:
            front = pareto_front(jobs, report.metrics, report.directions)
            lines.append(
                "Pareto front: "
                + "; ".join(
                    f"job {j.name} (" + ", ".join(f"{m} {fmt(j.metric(m))}" for m in report.metrics) + ")"
                    for j in front
                )
                + "."
            )
    # With a study, "value" is what the sweeper was told: the penalty for diverged/failed trials.
    value_column = ["value"] if report.study is not None else []
    header = ["job", "status", *params, *value_column, *metrics]
    rows = []
    for job in jobs:
        settings = [parse_value(job.overrides[p]) if p in job.overrides else None for p in params]
        told = [", ".join(fmt(v) for v in job.values) if job.values else None] if value_column else []
        rows.append([job.name, job.status, *settings, *told, *[job.metric(m) for m in metrics]])
    lines += ["", "## Jobs", "", markdown_table(header, rows)]
    problems = [j for j in jobs if not j.completed]
    if problems:
        lines += ["", "Not completed:"]
        for job in problems:
            reason = job.metrics.get("reason") or {
                "missing": "no metrics.json (killed, crashed or not started)",
                "interrupted": "interrupted; re-running the sweep command re-runs it",
            }.get(job.status, "")
            lines.append(f"- job `{job.name}`: {job.status}. {reason}".rstrip())
    if report.groups:
        group_keys = sorted({k for g in report.groups for k in g.params if k in params}) or ["jobs"]
        header = [*group_keys, "seeds", *[m for m in metrics if any(m in g.stats for g in report.groups)]]
        rows = []
        for group in report.groups:
            row: list[Any] = [group.params.get(k, "all") for k in group_keys] + [len(group.jobs)]
            for m in header[len(group_keys) + 1 :]:
                mean, std, _ = group.stats.get(m, (None, None, 0))
                row.append("" if mean is None else f"{fmt(mean)} ± {fmt(std)}")
            rows.append(row)
        lines += [
            "",
            "## Mean ± std over seeds",
            "",
            "Sample standard deviation over the completed seeds.",
            "",
        ]
        lines.append(markdown_table(header, rows))
    if images:
        lines += ["", "## Plots", ""]
        lines += [f"![{image.stem}]({image.name})" for image in images]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- entry points
def build_report(root: Path | str, out: Path | str | None = None) -> Report:
    """Collect the jobs under ``root`` and write the tables and plots into ``out``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such sweep directory: {root}")
    out = Path(out) if out is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    study = load_study(root)
    jobs = collect_jobs(root, study)
    names, directions = objective_of(jobs, study)
    params = [p for p in varying_keys(jobs) if p != "hydra.sweep.subdir"]
    report = Report(
        root=root,
        out=out,
        jobs=jobs,
        metrics=names,
        directions=directions,
        params=params,
        study=study,
        best=best_job(jobs, names[0], directions[0]),
        groups=seed_groups(jobs, table_metrics(names, jobs)),
    )
    images = [objective_vs_param(report, p) for p in params if p != "seed"]
    images += [history(report), psnr_curves(report), pareto_plot(report), best_panels(report)]
    if study is not None:
        images += optuna_plots(study.directions, study.trials, names, out)
    images = [i for i in images if i is not None]
    report.files = [*images, jobs_csv(report)]
    if report.groups:
        report.files.append(seeds_csv(report, table_metrics(names, jobs)))
    md = out / "report.md"
    md.write_text(markdown(report, images))
    report.files.insert(0, md)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dip_lightning.sweeps.report",
        description="Tables and plots of a sweep (outputs/sweeps/<study>) or multirun (outputs/multiruns/<time>).",
    )
    parser.add_argument("directory", type=Path, help="the sweep or multirun directory")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <directory>/report)")
    args = parser.parse_args(argv)
    try:
        report = build_report(args.directory, args.out)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not report.jobs:
        print(
            f"error: no job directories (with .hydra/ or metrics.json) under {args.directory}",
            file=sys.stderr,
        )
        return 2
    counts = ", ".join(f"{n} {s}" for s, n in status_counts(report.jobs).items())
    print(f"{len(report.jobs)} jobs ({counts}); report written to {report.out}:")
    for path in report.files:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
