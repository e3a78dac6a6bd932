"""DIP variants whose after-training step can be observed, to test the job's ``after_fit`` call."""

from __future__ import annotations

import signal

from dip_lightning.methods.dip import DIP


class RecordsAfterFit(DIP):
    """Reports the ground truth as its mean once ``after_fit`` ran: a result no 3-step fit gives."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.after_fit_calls = 0

    def after_fit(self) -> None:
        self.after_fit_calls += 1

    def predict_distribution(self):
        prediction = super().predict_distribution()
        if self.after_fit_calls == 1:
            prediction.mean = self.problem.ground_truth + 0.01  # PSNR 40 dB
        return prediction


class InterruptedAfterFit(DIP):
    """Receives SIGINT in the middle of its ``after_fit`` step."""

    def after_fit(self) -> None:
        signal.raise_signal(signal.SIGINT)
        raise AssertionError("the signal should have ended this step")
