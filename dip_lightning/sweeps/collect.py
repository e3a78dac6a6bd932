"""Reading a sweep or multirun directory back: jobs, their parameters, metrics and status.

Every job directory Hydra wrote holds ``.hydra/overrides.yaml`` (its parameters) and, once the run
finished, ``metrics.json``. A job without ``metrics.json`` was killed or crashed; it is kept and
marked ``missing`` (or ``interrupted`` when the Optuna study still has the trial RUNNING), so a
report of a partial or failed sweep still lists every job.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SEED_KEYS = ("seed",)
SKIP_PARTS = {"wandb", "report", ".submitit", "csv"}


@dataclass
class Job:
    """One job directory of a sweep."""

    name: str
    path: Path
    overrides: dict[str, str]
    metrics: dict[str, Any]
    status: str
    trial: int | None = None
    trial_state: str | None = None
    values: list[float] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None


@dataclass
class StudyInfo:
    """The Optuna study found next to the jobs (if any)."""

    name: str
    storage: str
    directions: list[str]
    trials: list[Any]


def parse_value(text: str) -> Any:
    """An override's value as a number when it is one (for plots), else the string."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_overrides(job_dir: Path) -> dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    items = yaml.safe_load(path.read_text()) or []
    overrides = {}
    for item in items:
        key, _, value = str(item).partition("=")
        overrides[key.lstrip("+~")] = value
    return overrides


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_config(job_dir: Path) -> dict[str, Any]:
    for path in (job_dir / "config.yaml", job_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            try:
                return yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                continue
    return {}


def sort_key(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (10**9, name)


def find_job_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` written by Hydra jobs (``.hydra/`` or ``metrics.json``)."""
    found = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    found |= {p.parent for p in root.rglob("metrics.json")}
    keep = [d for d in found if not (SKIP_PARTS & set(d.relative_to(root).parts))]
    return sorted(keep, key=lambda d: [sort_key(part) for part in d.relative_to(root).parts])


def load_study(root: Path) -> StudyInfo | None:
    """The Optuna study of a sweep directory: its journal, SQLite file or ``study.yaml`` pointer.

    The first study found is used; a storage that cannot be read (an older Optuna's schema, a
    server that is down) is skipped, so the report still lists the jobs.
    """
    from dip_lightning.sweeps.storage import open_storage, storages_in

    settings = storages_in(root)
    if not settings:
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for setting in settings:
        try:
            storage = open_storage(setting)
            summaries = optuna.study.get_all_study_summaries(storage=storage)
        except Exception:
            continue
        for summary in summaries:
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            directions = [d.name.lower() for d in study.directions]
            return StudyInfo(summary.study_name, setting, directions, study.get_trials(deepcopy=False))
    return None


def collect_jobs(root: Path, study: StudyInfo | None = None) -> list[Job]:
    """Every job under ``root``, joined with its Optuna trial when the study is known."""
    root = Path(root)
    trials_by_dir: dict[str, Any] = {}
    if study is not None:
        for trial in study.trials:
            job_dir = trial.user_attrs.get("job_dir")
            key = Path(job_dir).name if job_dir else str(trial.number)
            trials_by_dir[key] = trial
    jobs = []
    for job_dir in find_job_dirs(root):
        name = str(job_dir.relative_to(root))
        metrics = read_json(job_dir / "metrics.json")
        trial = trials_by_dir.pop(name, None) if study is not None else None
        status = str(metrics.get("status") or "missing")
        state = trial.state.name.lower() if trial is not None else None
        if not metrics and state in ("running", "waiting"):
            status = "interrupted"
        jobs.append(
            Job(
                name=name,
                path=job_dir,
                overrides=read_overrides(job_dir),
                metrics=metrics,
                status=status,
                trial=trial.number if trial is not None else None,
                trial_state=state,
                values=list(trial.values) if trial is not None and trial.values else None,
                config=read_config(job_dir),
            )
        )
    for key, trial in sorted(trials_by_dir.items(), key=lambda kv: kv[1].number):
        # A trial whose job never wrote its directory (killed before it started).
        jobs.append(
            Job(
                name=key,
                path=root / key,
                overrides={k: str(v) for k, v in trial.params.items()},
                metrics={},
                status="missing",
                trial=trial.number,
                trial_state=trial.state.name.lower(),
            )
        )
    return jobs


def varying_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value differs between jobs (the swept parameters), in first-seen order."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    if len(jobs) < 2:
        return keys
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def constant_overrides(jobs: Sequence[Job]) -> dict[str, str]:
    varying = set(varying_keys(jobs))
    constant: dict[str, str] = {}
    for job in jobs:
        for key, value in job.overrides.items():
            if key not in varying:
                constant.setdefault(key, value)
    return constant


def objective_of(jobs: Sequence[Job], study: StudyInfo | None) -> tuple[list[str], list[str]]:
    """The optimised metric names and directions, from the jobs' configs (or the study)."""
    for job in jobs:
        names = job.config.get("optimized_metric")
        directions = job.config.get("optimization_direction")
        if names is not None and directions is not None:
            names = names if isinstance(names, list) else [names]
            directions = directions if isinstance(directions, list) else [directions]
            return [str(n) for n in names], [str(d) for d in directions]
    if study is not None:
        return ["psnr"] * len(study.directions), list(study.directions)
    return ["psnr"], ["maximize"]


def best_job(jobs: Iterable[Job], metric: str, direction: str) -> Job | None:
    """The completed job with the best value of ``metric``."""
    scored = [j for j in jobs if j.completed and j.metric(metric) is not None]
    if not scored:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    return max(scored, key=lambda j: sign * j.metric(metric))


def pareto_front(jobs: Sequence[Job], metrics: Sequence[str], directions: Sequence[str]) -> list[Job]:
    """Completed jobs not dominated in all ``metrics`` by another completed job."""
    signs = [1.0 if d == "maximize" else -1.0 for d in directions]
    scored = [j for j in jobs if j.completed and all(j.metric(m) is not None for m in metrics)]

    def point(job: Job) -> list[float]:
        return [s * job.metric(m) for s, m in zip(signs, metrics)]

    front = []
    for job in scored:
        p = point(job)
        dominated = any(
            all(a >= b for a, b in zip(point(o), p)) and any(a > b for a, b in zip(point(o), p))
            for o in scored
            if o is not job
        )
        if not dominated:
            front.append(job)
    return front


@dataclass
class SeedGroup:
    """Jobs that differ only in their seed, with mean and std of each metric."""

    params: dict[str, str]
    jobs: list[Job]
    stats: dict[str, tuple[float, float, int]]


def seed_groups(jobs: Sequence[Job], metrics: Sequence[str]) -> list[SeedGroup]:
    """Group completed jobs by their overrides without the seed; groups of two or more jobs.

    The std is the sample standard deviation (n - 1), the usual "mean ± std over seeds".
    """
    groups: dict[tuple[tuple[str, str], ...], list[Job]] = {}
    for job in jobs:
        if not job.completed or not any(k in job.overrides for k in SEED_KEYS):
            continue
        key = tuple(sorted((k, v) for k, v in job.overrides.items() if k not in SEED_KEYS))
        groups.setdefault(key, []).append(job)
    result = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        stats = {}
        for metric in metrics:
            values = [v for v in (j.metric(metric) for j in members) if v is not None]
            if len(values) >= 2:
                stats[metric] = (statistics.fmean(values), statistics.stdev(values), len(values))
        result.append(SeedGroup(params=dict(key), jobs=members, stats=stats))
    return result
