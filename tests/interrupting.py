"""A callback that sends this process a signal after a given step, as a user or scheduler would."""

from __future__ import annotations

import signal
import time

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig

from dip_lightning.job import interrupt

HANDLER_WAIT_S = 5.0


class SignalAt(pl.Callback):
    """Sends ``signum`` (SIGTERM by default) ``times`` times to this process at the end of step ``step``.

    ``raise_signal`` delivers it to this (the main) thread; the wait makes sure its handler has run
    before the step ends, so the step the run stops at does not depend on timing. With ``job_num``
    it fires only in that job of a multirun (one trial of a sweep).
    """

    def __init__(
        self, step: int, signum: int = int(signal.SIGTERM), times: int = 1, job_num: int | None = None
    ) -> None:
        self.step = step
        self.signum = signum
        self.times = times
        self.job_num = job_num

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        if self.job_num is not None and HydraConfig.get().job.num != self.job_num:
            return
        for _ in range(self.times):
            signal.raise_signal(self.signum)
            deadline = time.monotonic() + HANDLER_WAIT_S
            while not interrupt.requested() and time.monotonic() < deadline:
                time.sleep(0.001)
