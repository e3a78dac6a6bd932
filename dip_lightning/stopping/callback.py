"""Lightning glue: feed each step's output to a stopping criterion and stop the trainer.

The method's ``training_step`` returns what the step produced (the keys of
:mod:`dip_lightning.tracking.step_output`): the output image (1, C, H, W), detached, on the
device; its misfit ||A x - y|| and PSNR (0-dim, None without ground truth); the output EMA.
Lightning hands that dict to :meth:`StoppingCallback.on_train_batch_end` as ``outputs``. Before
training the criterion gets the problem (:meth:`StoppingCriterion.prepare`), so that a bad
combination fails at once instead of after the first step. The callback knows no rule by name:
what a rule needs and what its detection means, it declares itself.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from dip_lightning.errors import check_choice
from dip_lightning.stopping.base import StoppingCriterion
from dip_lightning.tracking import step_output

log = logging.getLogger(__name__)

# What a run reports for the detected step: the output EMA centred on it (read a mean EMA age
# later), the output EMA at that step, or the raw output there (docs/stopping.md).
REPORTS = ("ema_centred", "ema", "output")
EMA_REPORTS = ("ema_centred", "ema")


class StoppingCallback(pl.Callback):
    """Runs ``criterion`` after every training step and stops training when it says so.

    Args:
        criterion: the stopping rule.
        report: ``"output"`` reports the raw network output at the detected step; ``"ema"`` the
            method's output EMA at that step; ``"ema_centred"`` the EMA read one mean EMA age
            (``ema_lag`` of the step outputs, 99 steps for a decay of 0.99) after the detected
            step, so that the outputs it averages are centred on the detection; when training
            ends sooner, the last EMA. Kept on the device alongside the criterion's image; steps
            that hand on no EMA fall back to the raw output.
    """

    def __init__(self, criterion: StoppingCriterion, report: str = "output") -> None:
        if not isinstance(criterion, StoppingCriterion):
            raise TypeError(f"StoppingCallback needs a StoppingCriterion, got {type(criterion).__name__}")
        self.criterion = criterion
        self.report = str(check_choice("stopping.report", report, REPORTS))
        self._detected_ema: Tensor | None = None
        # The detected step the kept EMA belongs to (-1: none yet), and the latest EMA.
        self._ema_for_step: Tensor | None = None
        self._latest_ema: Tensor | None = None
        self.stopped_early = False
        self.stop_step: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        problem = getattr(pl_module, "problem", None)
        if problem is None:
            raise RuntimeError("StoppingCallback needs pl_module.problem; attach the problem before fitting")
        self.prepare(problem)

    def prepare(self, problem: Any) -> None:
        """Let the criterion check ``problem`` and take what it needs from it (before training)."""
        self.criterion.prepare(problem)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        stop = self.observe(trainer, outputs)
        if getattr(trainer, "world_size", 1) > 1 and self.criterion.checked:
            # Ranks see different outputs (their own training noise); rank zero, which writes the
            # reconstruction, decides for all of them, or the ranks would wait on each other forever.
            stop = bool(trainer.strategy.broadcast(stop, src=0))
        if stop:
            trainer.should_stop = True

    def observe(self, trainer: pl.Trainer, outputs: Any) -> bool:
        """Feed this step's ``outputs`` to the criterion; True when it says stop (nothing else stops).

        Kept apart from :meth:`on_train_batch_end` so that
        :class:`~dip_lightning.stopping.monitor.StoppingMonitor` can watch several criteria on
        one run without stopping it.
        """
        image = step_output.output_image(outputs, "StoppingCallback")
        # The output was computed before this batch's optimizer step, so it belongs to step
        # global_step - 1: the step Lightning logs this batch's metrics under and the method's
        # own peak tracking uses.
        step = max(trainer.global_step - 1, 0)
        stop = self.criterion.update(
            step,
            image,
            misfit=step_output.value(outputs, step_output.MISFIT),
            psnr=step_output.value(outputs, step_output.PSNR),
        )
        if self.report in EMA_REPORTS:
            lag = step_output.value(outputs, step_output.EMA_LAG) if self.report == "ema_centred" else 0
            self._keep_ema(step, step_output.value(outputs, step_output.EMA), int(lag or 0))
        if stop and not self.stopped_early:
            self.stopped_early = True
            self.stop_step = step
            log.info(
                "early stopping (%s) at step %d; reconstruction from step %s",
                self.criterion.name,
                step,
                self.criterion.detected_step,
            )
        return stop

    def _keep_ema(self, step: int, ema: Tensor | None, lag: int) -> None:
        """Copy the step's output EMA when it is ``lag`` steps after the detected step (branch-free)."""
        best_step = self.criterion.detected_step_tensor
        if ema is None or best_step is None:
            return
        self._latest_ema = ema.detach()
        if self._detected_ema is None or self._detected_ema.shape != ema.shape:
            self._detected_ema = torch.zeros_like(ema)
            self._ema_for_step = torch.full((), -1, dtype=torch.int64, device=ema.device)
        elif self._detected_ema.device != ema.device:
            self._detected_ema = self._detected_ema.to(ema.device)
            self._ema_for_step = self._ema_for_step.to(ema.device)
        best_step = best_step.to(ema.device)
        hit = (best_step >= 0) & (best_step + lag == step)
        self._detected_ema.copy_(torch.where(hit, ema.detach(), self._detected_ema))
        self._ema_for_step.copy_(torch.where(hit, best_step, self._ema_for_step))

    @property
    def detected_ema(self) -> Tensor | None:
        """The output EMA the run reports for the detected step (``report`` ``ema`` or
        ``ema_centred``), else None. When training ended before the centred EMA could be read,
        the last EMA is the closest to it."""
        detected = self.criterion.detected_step
        if self._detected_ema is None or detected is None:
            return None
        if self._ema_for_step is not None and int(self._ema_for_step) == detected:
            return self._detected_ema.clone()
        return None if self._latest_ema is None else self._latest_ema.clone()

    @property
    def reports_detection(self) -> bool:
        """Whether the run reports the criterion's detection instead of the method's reconstruction."""
        return self.criterion.reports_detection

    def reported_image(self) -> tuple[Tensor | None, str]:
        """The image the run reports at the detection, and its label (``ema`` or ``output``)."""
        ema = self.detected_ema if self.report in EMA_REPORTS else None
        if ema is not None:
            return ema, self.report
        return self.criterion.detected_image, "output"

    def stop_reason(self) -> str:
        """Why training ended where it did, in words (for the run's summary)."""
        if not self.stopped_early:
            return "ran to trainer.max_steps"
        return self.criterion.stop_reason()

    def summary(self) -> dict[str, Any]:
        """What to log at the end of a run: where the reconstruction comes from and why."""
        return {
            "criterion": self.criterion.name,
            "reports_detection": self.criterion.reports_detection,
            "detected_step": self.criterion.detected_step,
            "stopped_early": self.stopped_early,
            "stop_step": self.stop_step,
            "stop_reason": self.stop_reason(),
            **self.criterion.details(),
            "best_score": self.criterion.best_score,
            "final_score": self.criterion.last_score,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion.state_dict(),
            "stopped_early": self.stopped_early,
            "stop_step": self.stop_step,
            "detected_ema": None if self._detected_ema is None else self._detected_ema.detach().clone(),
            "ema_for_step": None if self._ema_for_step is None else self._ema_for_step.detach().clone(),
            "latest_ema": None if self._latest_ema is None else self._latest_ema.detach().clone(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.criterion.load_state_dict(state_dict["criterion"])
        self.stopped_early = bool(state_dict["stopped_early"])
        self.stop_step = state_dict["stop_step"]
        ema = state_dict.get("detected_ema")
        self._detected_ema = None if ema is None else ema.detach().clone()
        for name in ("ema_for_step", "latest_ema"):
            saved = state_dict.get(name)
            setattr(self, f"_{name}", None if saved is None else saved.detach().clone())
