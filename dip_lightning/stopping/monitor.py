"""Watch several stopping criteria on one training run, for comparisons and benchmarks.

Criteria never change the training itself (they consume no random numbers and touch no weights),
so a run that goes to ``max_steps`` passes through exactly the outputs that a run stopped by any
one criterion would have seen up to its stop. Each criterion here is fed the same step outputs
(image, misfit, PSNR of :mod:`dip_lightning.tracking.step_output`) as the
:class:`~dip_lightning.stopping.callback.StoppingCallback` feeds it, and is frozen at the step
where its own rule would have stopped the run, so its detection is the one a separate run with
that criterion would report. One run per image then measures every criterion at once.

The monitor never stops training. At the end of fitting it writes a JSON file with, per
criterion, the :meth:`StoppingCallback.summary` keys and the PSNR/SSIM of the detected image when
the ground truth is known, plus the run's peak PSNR (``peak_psnr``, ``peak_step``) from the
method's trajectory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from dip_lightning.metrics.image import psnr, ssim
from dip_lightning.outputs import save_json
from dip_lightning.stopping.base import StoppingCriterion
from dip_lightning.stopping.callback import StoppingCallback

log = logging.getLogger(__name__)


class StoppingMonitor(pl.Callback):
    """Feeds every criterion in ``criteria`` until it would stop; writes their results to ``path``.

    Args:
        criteria: name -> criterion; the names become the keys of the results.
        path: JSON file written when fitting ends (None: keep the results in memory only).
    """

    def __init__(self, criteria: Mapping[str, StoppingCriterion], path: str | Path | None = None) -> None:
        if not criteria:
            raise ValueError("StoppingMonitor needs at least one criterion")
        self.watchers = {str(name): StoppingCallback(criterion) for name, criterion in criteria.items()}
        self.path = None if path is None else Path(path)
        self.results: dict[str, Any] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for watcher in self.watchers.values():
            watcher.on_fit_start(trainer, pl_module)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        for watcher in self.watchers.values():
            if not watcher.stopped_early:
                watcher.observe(trainer, outputs)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.results = self.summarise(pl_module)
        if self.path is not None:
            save_json(self.path, self.results)
            log.info("stopping monitor: results of %d criteria in %s", len(self.watchers), self.path)

    def summarise(self, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Per criterion: its summary and, with a ground truth, the quality of its detection."""
        problem = pl_module.problem
        truth = None if problem is None else problem.ground_truth
        trajectory = getattr(pl_module, "trajectory", None)
        peak = {} if trajectory is None else trajectory.peak_summary()
        results: dict[str, Any] = {"steps": int(pl_module.global_step), **peak, "criteria": {}}
        for name, watcher in self.watchers.items():
            entry = watcher.summary()
            image = watcher.criterion.detected_image
            if truth is not None and image is not None:
                image = problem.aligned(image)
                entry["detected_psnr"] = float(psnr(image, truth).mean())
                entry["detected_ssim"] = float(ssim(image, truth).mean())
                if "peak_psnr" in peak:
                    entry["detection_gap"] = peak["peak_psnr"] - entry["detected_psnr"]
            results["criteria"][name] = entry
        return results
