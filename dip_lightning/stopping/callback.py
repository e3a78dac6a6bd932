"""Lightning glue: feed each step's output to a stopping criterion and stop the trainer.

The method (a LightningModule) publishes what the criteria need after every training step:
``latest_image`` (1, C, H, W), detached, on the device; ``latest_misfit`` (0-dim ||A x - y||) and
``latest_psnr`` (0-dim, None without ground truth). The problem (``pl_module.problem``) gives the
observation, the ground truth and the noise std, which the callback checks before training starts
so that a bad combination fails at once instead of after the first step.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from dip_lightning.errors import ConfigError
from dip_lightning.stopping.criteria import ESTIMATE, DiscrepancyPrinciple, Oracle, StoppingCriterion
from dip_lightning.stopping.noise_level import estimate_noise_std

log = logging.getLogger(__name__)

NOISE_FROM_CONFIG = "config (stopping.criterion.noise_std)"
NOISE_FROM_PROBLEM = "problem (known noise std)"
NOISE_ESTIMATED = "estimated from the observation (wavelet MAD)"
# What a run reports at the detected step: the method's output EMA there, or the raw output.
REPORTS = ("ema", "output")


def _real_element_count(observation: Tensor) -> int:
    """Number of real-valued measurement elements; a complex value counts as two."""
    return observation.numel() * (2 if observation.is_complex() else 1)


class EarlyStopping(pl.Callback):
    """Runs ``criterion`` after every training step and stops training when it says so.

    Args:
        criterion: the stopping rule.
        report: ``"output"`` reports the raw network output at the detected step; ``"ema"`` the
            method's output EMA at that step (kept on the device alongside the criterion's image;
            methods without an EMA fall back to the raw output).
    """

    def __init__(self, criterion: StoppingCriterion, report: str = "output") -> None:
        if not isinstance(criterion, StoppingCriterion):
            raise TypeError(f"EarlyStopping needs a StoppingCriterion, got {type(criterion).__name__}")
        if report not in REPORTS:
            raise ConfigError(
                "stopping.report", report, "must be 'ema' (the output EMA at the detected step) or 'output'"
            )
        self.criterion = criterion
        self.report = report
        self._detected_ema: Tensor | None = None
        self.noise_std: float | None = None
        self.noise_std_source: str | None = None
        self.stopped_early = False
        self.stop_step: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        problem = getattr(pl_module, "problem", None)
        if problem is None:
            raise RuntimeError("EarlyStopping needs pl_module.problem; attach the problem before fitting")
        self.prepare(problem)

    def prepare(self, problem: Any) -> None:
        """Check the criterion against ``problem`` and give the discrepancy principle its delta."""
        if isinstance(self.criterion, Oracle) and problem.ground_truth is None:
            raise ConfigError(
                "stopping",
                "oracle",
                "needs a ground-truth image; this problem has none, so choose stopping=wmv, emv, "
                "discrepancy or fixed",
            )
        if isinstance(self.criterion, DiscrepancyPrinciple):
            self._prepare_discrepancy(self.criterion, problem)

    def _prepare_discrepancy(self, criterion: DiscrepancyPrinciple, problem: Any) -> None:
        observation: Tensor = problem.observation
        sigma, source = self._noise_level(criterion, problem)
        if not sigma > 0:
            raise ConfigError(
                "stopping.criterion.noise_std",
                criterion.noise_std,
                f"the noise level from the {source} is {sigma}, so the misfit target would be 0 "
                "(a noise-free simulation has nothing to stop at); set stopping.criterion.noise_std > 0, "
                "simulate noise (e.g. noise=gaussian) or choose another criterion",
            )
        criterion.set_noise_level(sigma, _real_element_count(observation))
        self.noise_std, self.noise_std_source = sigma, source
        log.info(
            "discrepancy principle: noise std %.4g from the %s; stop when misfit <= %.4g (tau=%g)",
            sigma,
            source,
            criterion.threshold,
            criterion.tau,
        )

    @staticmethod
    def _noise_level(criterion: DiscrepancyPrinciple, problem: Any) -> tuple[float, str]:
        """The configured noise std, else the problem's, else an estimate from the observation."""
        if isinstance(criterion.noise_std, float):
            return criterion.noise_std, NOISE_FROM_CONFIG
        known = getattr(problem, "noise_std", None)
        if known is not None and criterion.noise_std != ESTIMATE:
            return float(known), NOISE_FROM_PROBLEM
        try:
            return estimate_noise_std(problem.observation), NOISE_ESTIMATED
        except ValueError as error:
            raise ConfigError(
                "stopping.criterion.noise_std",
                None,
                f"must be set because it cannot be estimated here ({error})",
            ) from error

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        stop = self.observe(trainer, pl_module)
        if getattr(trainer, "world_size", 1) > 1 and self.criterion.checked:
            # Ranks see different outputs (their own training noise); rank zero, which writes the
            # reconstruction, decides for all of them, or the ranks would wait on each other forever.
            stop = bool(trainer.strategy.broadcast(stop, src=0))
        if stop:
            trainer.should_stop = True

    def observe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Feed this step's output to the criterion; True when it says stop (nothing else stops).

        Kept apart from :meth:`on_train_batch_end` so that
        :class:`~dip_lightning.stopping.monitor.StoppingMonitor` can watch several criteria on
        one run without stopping it.
        """
        image = getattr(pl_module, "latest_image", None)
        if image is None:
            raise RuntimeError(
                f"EarlyStopping needs {type(pl_module).__name__}.latest_image "
                "to be set in every training step"
            )
        # The output was computed before this batch's optimizer step, so it belongs to step
        # global_step - 1: the step Lightning logs this batch's metrics under and the method's
        # own peak tracking uses.
        step = max(trainer.global_step - 1, 0)
        stop = self.criterion.update(
            step,
            image,
            misfit=getattr(pl_module, "latest_misfit", None),
            psnr=getattr(pl_module, "latest_psnr", None),
        )
        if self.report == "ema":
            self._keep_ema(step, pl_module)
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

    def _keep_ema(self, step: int, pl_module: pl.LightningModule) -> None:
        """Copy the method's output EMA when this step became the detected one (branch-free)."""
        ema = getattr(getattr(pl_module, "ema", None), "value", None)
        best_step = self.criterion.detected_step_tensor
        if ema is None or best_step is None:
            return
        if self._detected_ema is None or self._detected_ema.shape != ema.shape:
            self._detected_ema = torch.zeros_like(ema)
        elif self._detected_ema.device != ema.device:
            self._detected_ema = self._detected_ema.to(ema.device)
        hit = best_step.to(ema.device) == step
        self._detected_ema.copy_(torch.where(hit, ema.detach(), self._detected_ema))

    @property
    def detected_ema(self) -> Tensor | None:
        """The output EMA at the detected step (with ``report="ema"``), else None."""
        if self._detected_ema is None or self.criterion.detected_step is None:
            return None
        return self._detected_ema.clone()

    def reported_image(self) -> tuple[Tensor | None, str]:
        """The image the run reports at the detection, and its label (``ema`` or ``output``)."""
        ema = self.detected_ema if self.report == "ema" else None
        if ema is not None:
            return ema, "ema"
        return self.criterion.detected_image, "output"

    def stop_reason(self) -> str:
        """Why training ended where it did, in words (for the run's summary)."""
        if not self.stopped_early:
            return "ran to trainer.max_steps"
        patience = getattr(self.criterion, "patience", None)
        if patience is not None:
            return (
                f"its score had not improved for {patience} steps since step {self.criterion.detected_step}"
            )
        threshold = getattr(self.criterion, "threshold", None)
        if threshold is not None:
            return f"the misfit ||A x - y|| reached tau * delta = {threshold:.4g}"
        return "its rule was met"

    def summary(self) -> dict[str, Any]:
        """What to log at the end of a run: where the reconstruction comes from and why."""
        return {
            "criterion": self.criterion.name,
            "detected_step": self.criterion.detected_step,
            "stopped_early": self.stopped_early,
            "stop_step": self.stop_step,
            "stop_reason": self.stop_reason(),
            "noise_std": self.noise_std,
            "noise_std_source": self.noise_std_source,
            "best_score": self.criterion.best_score,
            "final_score": self.criterion.last_score,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion.state_dict(),
            "stopped_early": self.stopped_early,
            "stop_step": self.stop_step,
            "noise_std": self.noise_std,
            "noise_std_source": self.noise_std_source,
            "detected_ema": None if self._detected_ema is None else self._detected_ema.detach().clone(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.criterion.load_state_dict(state_dict["criterion"])
        self.stopped_early = bool(state_dict["stopped_early"])
        self.stop_step = state_dict["stop_step"]
        self.noise_std = state_dict["noise_std"]
        self.noise_std_source = state_dict["noise_std_source"]
        ema = state_dict.get("detected_ema")
        self._detected_ema = None if ema is None else ema.detach().clone()
