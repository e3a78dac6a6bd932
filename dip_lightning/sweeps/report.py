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
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    seed_groups,
    varying_keys,
)
from dip_lightning.sweeps.optuna_plots import optuna_plots
from dip_lightning.sweeps.report_plots import (
    best_panels,
    fmt,
    history,
    objective_vs_param,
    pareto_plot,
    psnr_curves,
)

TABLE_METRICS = ("psnr", "ssim", "uce", "nll", "heldout_mse", "peak_psnr", "steps", "seconds")
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
