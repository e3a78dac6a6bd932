"""A callback that sends this process a signal after a given step, as a user or scheduler would."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class SignalAt(pl.Callback):
    """Sends ``signum`` (SIGTERM by default) ``times`` times to this process at the end of step ``step``."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM), times: int = 1) -> None:
        self.step = step
        self.signum = signum
        self.times = times

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)
