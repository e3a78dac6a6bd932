"""The figures of a sweep report (:mod:`dip_lightning.sweeps.report`): the objective against
each swept parameter, the objective per trial, the PSNR curves, the Pareto front and the best
job's images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from dip_lightning.sweeps.collect import Job, pareto_front, parse_value, read_json
from dip_lightning.viz.plots import save_figure

if TYPE_CHECKING:
    from dip_lightning.sweeps.report import Report

BEST_PANELS = (
    ("ground_truth", "ground truth"),
    ("observation", "observation"),
    ("baseline", "baseline"),
    ("reconstruction", "reconstruction"),
    ("variance_total", "variance"),
    ("error_squared", "squared error"),
)


def fmt(value: Any) -> str:
    """A metric or parameter value as a short, readable string."""
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
    """A file-name-safe version of a parameter name."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


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
