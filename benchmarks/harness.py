"""Measuring training steps: time per step, peak memory, FLOPs, the device's peak, and the tables.

The platform is measured through its real job (``dip_lightning.job.run.run``: loggers, callbacks,
stopping rule, checkpointing as configured) with a :class:`StepTimer` callback added through the
config; the timer ends the job after the last step, so evaluation and file writing (done once per
run, not per step) stay out of the numbers. The plain reference loop (``reference_loops``) is timed
the same way: from the start of step ``warmup`` to the start of the last step.
"""

from __future__ import annotations

import csv
import ctypes
import gc
import itertools
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.reference_loops import final_psnr, make_reference_step
from dip_lightning.config import compose_config
from dip_lightning.job.run import build_method, build_problem, run
from dip_lightning.tracking.wandb_setup import finish_wandb

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MIB = 2.0**20


@dataclass
class Measurement:
    """One timed run: mean ms per step after the warm-up, peak memory above the start, final PSNR
    and, for the plain loop, the FLOPs of one step."""

    ms_per_step: float
    peak_mib: float
    psnr: float
    flops: float = math.nan


class MemoryProbe:
    """Peak memory used between ``reset`` and ``peak_mib``.

    CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``) above what was
    allocated at the reset. CPU: the process's peak resident set (Linux ``VmHWM``, reset through
    ``/proc/self/clear_refs``) above the resident set at the reset, after handing freed heap
    memory back to the system so that it is not silently reused.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = 0.0

    def reset(self, collect: bool = True) -> None:
        if collect:
            gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        self.start = _proc_status_bytes("VmRSS")

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.start) / MIB
        return max(_proc_status_bytes("VmHWM") - self.start, 0.0) / MIB


def _proc_status_bytes(field: str) -> float:
    """A size field of /proc/self/status in bytes (NaN where there is no such file)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return math.nan


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimingDone(Exception):
    """Raised by StepTimer after the last step to end the job before its evaluation."""


@dataclass
class Reference:
    """A plain loop ready to step: its step closure, state and variant (see ``reference_loops``)."""

    step: Callable[[], None]
    state: Any
    variant: str
    rng: torch.Tensor
    """The loop's own state of the global CPU generator, swapped in around each of its steps."""

    def run_step(self, count_flops: bool) -> float:
        """One step; its FLOPs when asked (not for compiled networks, which the counter cannot see)."""
        if not count_flops or self.variant == "compile":
            self.step()
            return math.nan
        with FlopCounterMode(display=False) as counter:
            self.step()
        return float(counter.get_total_flops())


class StepTimer(pl.Callback):
    """Times the steps of a platform run (and of a plain loop run between them), then ends the job.

    Added to a job as ``+callbacks.step_timer._target_=benchmarks.harness.StepTimer``; the finished
    timer is left in ``StepTimer.finished`` for the benchmark to read. A step spans from the start
    of one training batch to the start of the next: everything the platform does per step.

    With a plain loop in ``StepTimer.pending_reference`` the timer runs one of its steps at every
    step boundary and times it apart, so both loops meet the same machine load: on a shared CPU
    the ratio then holds still while the absolute times wander. Peak memory is then taken per
    span, for each loop. Without one (the GPU mode), the device is synchronised only at the two
    boundary steps, so the platform runs as asynchronously as it would.
    """

    finished: ClassVar[StepTimer | None] = None
    pending_reference: ClassVar[Reference | None] = None

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = int(warmup)
        self.reference, StepTimer.pending_reference = StepTimer.pending_reference, None
        self.platform_spans: list[float] = []
        self.plain_spans: list[float] = []
        self.platform_peak = 0.0
        self.plain_peak = 0.0
        self.plain_flops = math.nan
        self.probe: MemoryProbe | None = None
        self.psnr = math.nan
        self._span_start: float | None = None
        self._step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:  # create W&B / CSV writers now, not inside the timed steps
            _ = logger.experiment
        self.probe = MemoryProbe(pl_module.device)
        self.probe.reset()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        assert self.probe is not None
        step, self._step = self._step, self._step + 1
        if step in (self.warmup, trainer.max_steps - 1):  # the timed spans' ends (async devices)
            synchronize(pl_module.device)
        now = time.perf_counter()
        if self._span_start is not None:
            self.platform_spans.append(now - self._span_start)
        if self.reference is not None:
            self.platform_peak = max(self.platform_peak, self.probe.peak_mib())
            self.probe.reset(collect=False)
            platform_rng = torch.get_rng_state()
            torch.set_rng_state(self.reference.rng)
            start = time.perf_counter()
            with torch.enable_grad():
                flops = self.reference.run_step(count_flops=not self.plain_spans)
            self.plain_spans.append(time.perf_counter() - start)
            self.reference.rng = torch.get_rng_state()
            torch.set_rng_state(platform_rng)
            self.plain_flops = flops if not math.isnan(flops) else self.plain_flops
            self.plain_peak = max(self.plain_peak, self.probe.peak_mib())
            self.probe.reset(collect=False)
        self._span_start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.probe is not None
        if self.reference is None:
            self.platform_peak = self.probe.peak_mib()
        history = pl_module.trajectory.ema_psnr_history
        if history:
            self.psnr = float(history[-1])
        StepTimer.finished = self
        raise TimingDone

    def platform(self) -> Measurement:
        return Measurement(mean_ms(self.platform_spans, self.warmup), self.platform_peak, self.psnr)

    def plain(self) -> Measurement:
        assert self.reference is not None
        spans = self.plain_spans[: len(self.platform_spans)]  # the steps the platform's spans cover
        psnr = final_psnr(self.reference.state)
        return Measurement(mean_ms(spans, self.warmup), self.plain_peak, psnr, self.plain_flops)


def mean_ms(spans: Sequence[float], warmup: int) -> float:
    """Mean of the step spans after the warm-up, in ms."""
    if len(spans) <= warmup:
        raise ValueError(f"need more than {warmup} timed steps, got {len(spans)}")
    return 1000.0 * statistics.fmean(spans[warmup:])


# Speed runs time a fixed number of steps: plain DIP's default early stopping is switched off
# (a later stopping=<name> in a job's own overrides still wins).
RUN_TO_BUDGET = "stopping=fixed"


def _platform_run(overrides: Sequence[str], steps: int, warmup: int) -> StepTimer:
    StepTimer.finished = None
    timer = [
        "+callbacks.step_timer._target_=benchmarks.harness.StepTimer",
        f"+callbacks.step_timer.warmup={warmup}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([RUN_TO_BUDGET, *overrides, *timer, f"trainer.max_steps={steps}"], tmp)
        try:
            run(cfg)
        except TimingDone:
            pass
        finally:
            finish_wandb()
            StepTimer.pending_reference = None
    done = StepTimer.finished
    if done is None:
        raise RuntimeError("the platform run ended before its last step")
    return done


def platform_measure(overrides: Sequence[str], steps: int, warmup: int) -> Measurement:
    """Time ``steps`` steps of the platform's job composed from ``overrides``."""
    return _platform_run(overrides, steps, warmup).platform()


def paired_measure(
    base: Sequence[str], variant_overrides: Sequence[str], steps: int, warmup: int, variant: str = "fp32"
) -> tuple[Measurement, Measurement]:
    """The plain loop and the platform of the same job, stepped in turn in one CPU run.

    ``base`` composes the job; the platform also gets ``variant_overrides``, the plain loop applies
    ``variant`` itself. Returns (plain, platform).
    """
    cfg, problem, net, z = build_reference(base, torch.device("cpu"))
    step, state = make_reference_step(cfg, problem, net, z, variant)
    StepTimer.pending_reference = Reference(step, state, variant, torch.get_rng_state())
    timer = _platform_run([*base, *variant_overrides], steps, warmup)
    return timer.plain(), timer.platform()


def build_reference(
    overrides: Sequence[str], device: torch.device
) -> tuple[Any, Any, torch.nn.Module, torch.Tensor]:
    """Config, problem, network and input of a job, as the platform builds them, on ``device``."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([RUN_TO_BUDGET, *overrides], tmp)
    pl.seed_everything(int(cfg.seed), verbose=False)
    problem = build_problem(cfg)
    method = build_method(cfg, problem)
    return cfg, problem.to(device), method.net.to(device), method.net_input.to(device)


def reference_measure(
    overrides: Sequence[str], steps: int, warmup: int, device: torch.device, variant: str = "fp32"
) -> Measurement:
    """Time ``steps`` steps of the plain PyTorch loop of the same job.

    The first (untimed) step runs under ``FlopCounterMode`` to count the FLOPs of a step (forward,
    loss and backward; the optimiser's elementwise updates are not counted), except for compiled
    networks, which the counter cannot see into.
    """
    if warmup < 1:
        raise ValueError("the plain loop needs at least one warm-up step (it counts FLOPs there)")
    cfg, problem, net, z = build_reference(overrides, device)
    step, state = make_reference_step(cfg, problem, net, z, variant)
    probe = MemoryProbe(device)
    probe.reset()
    flops = math.nan
    times = []
    for index in range(steps):
        if index in (warmup, steps - 1):
            synchronize(device)
        times.append(time.perf_counter())
        if index == 0 and variant != "compile":
            with FlopCounterMode(display=False) as counter:
                step()
            flops = float(counter.get_total_flops())
        else:
            step()
    spans = [b - a for a, b in itertools.pairwise(times)]
    return Measurement(mean_ms(spans, warmup), probe.peak_mib(), final_psnr(state), flops)


def flops_per_step(overrides: Sequence[str], device: torch.device) -> float:
    """FLOPs of one eager fp32 training step of the plain loop (see ``Reference.run_step``)."""
    cfg, problem, net, z = build_reference(overrides, device)
    step, state = make_reference_step(cfg, problem, net, z)
    return Reference(step, state, "fp32", torch.get_rng_state()).run_step(count_flops=True)


def measured_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """Best dense matrix-multiply throughput in GFLOP/s: the practical peak of the device."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / 4)
    return 2.0 * n**3 / best / 1e9


def interleaved(
    measurers: dict[str, Callable[[], Measurement]], repeats: int
) -> dict[str, list[Measurement]]:
    """Run every measurer ``repeats`` times, alternating between them so machine noise hits all."""
    results: dict[str, list[Measurement]] = {name: [] for name in measurers}
    for repeat in range(repeats):
        names = list(measurers)
        if repeat % 2:
            names.reverse()
        for name in names:
            results[name].append(measurers[name]())
    return results


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def markdown(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    format_cell: Callable[[Any, str], str] | None = None,
) -> str:
    """A Markdown table of ``rows``: each cell by ``format_cell(value, column)``, else floats with
    3 significant decimals."""

    def cell(value: Any, column: str) -> str:
        if format_cell is not None:
            return format_cell(value, column)
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, ""), c) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], path: Path, float_format: str | None = ".6g"
) -> Path:
    """Write ``columns`` of ``rows`` (other keys ignored); floats as ``float_format``, or in full
    when it is None (tables that are read back and compared)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: (format(v, float_format) if float_format and isinstance(v, float) else v)
                    for k, v in row.items()
                }
            )
    return path
