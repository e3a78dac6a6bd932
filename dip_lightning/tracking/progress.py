"""Progress a person can follow: a one-line bar on a terminal, plain lines everywhere else.

The CPU trainer has Lightning's progress bar switched off (one step per epoch makes it print an
epoch bar per step). :class:`ProgressReport` replaces it. On a terminal it redraws one line
(``\\r``) every ``bar_every`` steps; when standard output is not a terminal (CI, ``nohup``, a
batch job) it prints a full line every ``every_n_steps`` steps instead, so that a log file gets a
readable line now and then rather than thousands of carriage returns. Each report gives the step,
the loss, the PSNR when a ground truth is known, the steps per second and the time left to
``trainer.max_steps`` (an upper bound when a stopping rule may end the run sooner).

Values are read from ``trainer.callback_metrics`` (what the method logged on its last logging
step), so a report costs one host read of two scalars and nothing is synchronised on other steps.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import pytorch_lightning as pl

from dip_lightning.errors import check_choice, check_int

MODES = ("auto", "bar", "lines", "none")
BAR_WIDTH = 20


def format_seconds(seconds: float) -> str:
    """``75`` -> ``'1:15'``, ``3725`` -> ``'1:02:05'``."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressReport(pl.Callback):
    """Prints training progress on rank zero.

    Args:
        every_n_steps: a line every this many steps when output is not a terminal (mode ``lines``).
        mode: ``auto`` (a bar on a terminal, lines otherwise), ``bar``, ``lines`` or ``none``.
        bar_every: redraw the bar every this many steps.
        stream: where to write (standard output by default).
    """

    def __init__(
        self, every_n_steps: int = 250, mode: str = "auto", bar_every: int = 10, stream: TextIO | None = None
    ) -> None:
        self.mode = str(check_choice("callbacks.progress.mode", mode, MODES))
        self.every_n_steps = check_int("callbacks.progress.every_n_steps", every_n_steps, 1)
        self.bar_every = check_int("callbacks.progress.bar_every", bar_every, 1)
        self._stream = stream
        self._start_time = 0.0
        self._start_step = 0
        self._bar_drawn = False

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def resolved_mode(self) -> str:
        """``bar`` or ``lines`` (or ``none``), with ``auto`` decided by whether output is a terminal."""
        if self.mode != "auto":
            return self.mode
        isatty = getattr(self.stream, "isatty", None)
        return "bar" if isatty is not None and isatty() else "lines"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_time = time.perf_counter()
        self._start_step = trainer.global_step
        self._bar_drawn = False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero:
            return
        mode = self.resolved_mode()
        step = trainer.global_step
        if mode == "lines" and step % self.every_n_steps == 0:
            print(self.describe(trainer, step), file=self.stream, flush=True)
        elif mode == "bar" and step % self.bar_every == 0:
            print("\r" + self.bar(trainer, step), end="", file=self.stream, flush=True)
            self._bar_drawn = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar_drawn and trainer.is_global_zero:
            print(file=self.stream, flush=True)  # leave the bar's last state on its own line
            self._bar_drawn = False

    def describe(self, trainer: pl.Trainer, step: int) -> str:
        """``step 500/2000  loss 0.0123  PSNR 27.31 dB  8.4 steps/s  at most 2:58 left``."""
        parts = [f"step {step}" + (f"/{trainer.max_steps}" if self.budget(trainer) else "")]
        metrics = trainer.callback_metrics
        loss = metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4g}")
        psnr = metrics.get("train/psnr")
        if psnr is not None:
            parts.append(f"PSNR {float(psnr):.2f} dB")
        elapsed = time.perf_counter() - self._start_time
        done = step - self._start_step
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.1f} steps/s")
            if self.budget(trainer):
                parts.append(f"at most {format_seconds((trainer.max_steps - step) / rate)} left")
        return "  ".join(parts)

    def bar(self, trainer: pl.Trainer, step: int) -> str:
        """The terminal line: a bar of the step budget followed by :meth:`describe`."""
        if not self.budget(trainer):
            return self.describe(trainer, step)
        filled = min(BAR_WIDTH, BAR_WIDTH * step // trainer.max_steps)
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] " + self.describe(trainer, step)

    @staticmethod
    def budget(trainer: pl.Trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0
