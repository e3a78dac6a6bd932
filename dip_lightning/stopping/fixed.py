"""``stopping=fixed``: run to the step budget; the method's own reconstruction is reported."""

from __future__ import annotations

from torch import Tensor

from dip_lightning.stopping.base import StoppingCriterion, device_scalar


class FixedSteps(StoppingCriterion):
    """Never stops: training runs to ``max_steps`` and the last output is the reconstruction.

    The data misfit, when given, is kept as the score so that runs can still be plotted.
    """

    name = "fixed"
    reports_detection = False

    def _observe(
        self, step: int, image: Tensor, misfit: Tensor | float | None, psnr: Tensor | float | None
    ) -> Tensor | None:
        assert self._best_image is not None and self._best_step is not None
        self._best_image.copy_(image)
        self._best_step.fill_(step)
        if misfit is None:
            return None
        score = device_scalar(misfit, image.device, self._score_dtype(), "misfit")
        assert self._best_score is not None
        self._best_score.copy_(score)
        return score

    def _should_stop(self, step: int) -> bool:
        return False

    def stop_reason(self) -> str:
        return "ran to trainer.max_steps"
