"""Ctrl-C and SIGTERM: stop at the next step boundary, keep everything, exit with 128 + signal.

A run can be stopped by a user (Ctrl-C sends SIGINT) or by a scheduler (SIGTERM, e.g. SLURM or
Kubernetes before a kill). Raising ``KeyboardInterrupt`` wherever the signal lands could leave the
network, the optimiser and the running statistics describing different steps, so a checkpoint
written then would not resume exactly. Instead the handler only records the request while
training runs; :class:`StopOnSignal` ends training at the next step boundary, where the
checkpoint is consistent. While results are written, signals are recorded and acted on after.

Phases (:class:`Phase`):

* ``IMMEDIATE`` (set-up, outside a run): the signal raises ``KeyboardInterrupt`` at once; nothing
  has been computed yet, so nothing is lost.
* ``STEP_BOUNDARY`` (training): the first signal asks for a stop after the current step; a second
  one stops at once (the results are still written, the checkpoint stays at the last boundary).
* ``DEFERRED`` (writing results): signals wait until the files are written; the
  :data:`FORCE_AFTER`-th one quits without finishing, in case writing hangs.

The exit status of an interrupted ``launch.py`` is ``128 + signal number``: 130 for SIGINT and 143
for SIGTERM, as a shell reports a process killed by that signal. ``launch.py`` installs the
handler for the whole process; :func:`dip_lightning.job.run.run` installs it for the duration of a job,
so jobs started by other launchers (joblib, Ray, submitit) or from a notebook behave the same.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import pytorch_lightning as pl

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FORCE_AFTER = 3
"""Signals received while results are written before the process quits without finishing."""
SIGNAL_EXIT_BASE = 128


class Phase(enum.Enum):
    IMMEDIATE = "immediate"
    STEP_BOUNDARY = "step_boundary"
    DEFERRED = "deferred"


@dataclass
class InterruptState:
    """What the handler has seen: the first signal, how many arrived, and the current phase."""

    signum: int | None = None
    count: int = 0
    phase: Phase = Phase.IMMEDIATE


STATE = InterruptState()


def signal_name(signum: int) -> str:
    name = signal.Signals(signum).name
    return f"{name} (Ctrl-C)" if signum == signal.SIGINT else name


def handle_signal(signum: int, frame: FrameType | None) -> None:
    """Record the signal and act according to the current phase (see the module docs)."""
    first = STATE.signum is None
    STATE.count += 1
    if first:
        STATE.signum = signum
    name = signal_name(signum)
    if STATE.phase is Phase.IMMEDIATE:
        raise KeyboardInterrupt(name)
    if STATE.phase is Phase.STEP_BOUNDARY:
        if first:
            log.warning(
                "%s received: stopping after this step, then saving (send it again to stop now)", name
            )
            return
        raise KeyboardInterrupt(name)
    if STATE.count >= FORCE_AFTER:
        print(
            f"{name} received {STATE.count} times: quitting without finishing.", file=sys.stderr, flush=True
        )
        os._exit(exit_status())
    log.warning(
        "%s received while the results are written; they are finished first (send it %d more times to "
        "quit without finishing)",
        name,
        FORCE_AFTER - STATE.count,
    )


def install() -> None:
    """Handle SIGINT and SIGTERM in this process (main thread only).

    A SIGINT that the parent ignores (a background job of a non-interactive shell) stays ignored,
    as Python itself does.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in HANDLED_SIGNALS:
        if signum == signal.SIGINT and signal.getsignal(signum) is signal.SIG_IGN:
            continue
        signal.signal(signum, handle_signal)


@contextmanager
def installed() -> Iterator[None]:
    """Handle the signals for the duration of the block (a job run by any launcher, a notebook),
    then put back the handlers that were there before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    install()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def reset() -> None:
    """Forget earlier signals (a new job of the same process starts clean)."""
    STATE.signum, STATE.count, STATE.phase = None, 0, Phase.IMMEDIATE


def requested() -> bool:
    """Whether a handled signal arrived since the last :func:`reset`."""
    return STATE.signum is not None


def exit_status() -> int:
    """``128 + signal number`` of the first signal (130 when the interrupt came another way)."""
    return SIGNAL_EXIT_BASE + int(STATE.signum or signal.SIGINT)


def describe() -> str:
    """How the run was interrupted, for metrics.json and the summary."""
    if STATE.signum is None:
        return "interrupted (KeyboardInterrupt)"
    return f"interrupted by {signal_name(STATE.signum)}"


@contextmanager
def phase(new: Phase) -> Iterator[None]:
    """Run the block in phase ``new``; the previous phase is back afterwards (one assignment, so no
    signal can fall between two phases)."""
    previous, STATE.phase = STATE.phase, new
    try:
        yield
    finally:
        STATE.phase = previous


class StopOnSignal(pl.Callback):
    """Ends training at the first step boundary after a signal; records the step it stopped at.

    The check runs at the end of each epoch (one optimisation step here), after the step's
    callbacks and evaluation, so the state a checkpoint saves there describes one step throughout.
    Data-parallel ranks agree: any rank's signal stops all of them at the same step.
    """

    def __init__(self) -> None:
        self.stopped_at: int | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stop = requested()
        if trainer.world_size > 1:
            stop = bool(trainer.strategy.reduce_boolean_decision(stop, all=False))
        if stop and self.stopped_at is None:
            self.stopped_at = int(trainer.global_step)
            trainer.should_stop = True
