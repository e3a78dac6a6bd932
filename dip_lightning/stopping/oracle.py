"""``stopping=oracle``: the step of best PSNR against the ground truth, for studies only."""

from __future__ import annotations

import math

from torch import Tensor

from dip_lightning.errors import ConfigError, check_int
from dip_lightning.stopping.base import Needs, PatienceCriterion, device_scalar


class Oracle(PatienceCriterion):
    """The step of best PSNR against the ground truth: an upper bound for the other criteria.

    It only exists for studies with a known image. With ``patience=None`` it never stops early;
    otherwise it stops ``patience`` steps after the last PSNR improvement.
    """

    name = "oracle"
    needs = Needs(ground_truth=True)
    _initial_best = -math.inf

    def __init__(
        self, patience: int | None = None, *, check_every: int = 10, history_every: int = 10
    ) -> None:
        super().__init__(check_every=check_every, history_every=history_every)
        self.patience = None if patience is None else check_int("stopping.criterion.patience", patience, 1)

    def _describe(self) -> str:
        return f"patience={self.patience}, {super()._describe()}"

    def _observe(
        self, step: int, image: Tensor, misfit: Tensor | float | None, psnr: Tensor | float | None
    ) -> Tensor | None:
        if psnr is None:
            raise ConfigError(
                "stopping",
                "oracle",
                "needs a ground-truth image to compute the PSNR; choose another criterion",
            )
        assert self._best_score is not None
        score = device_scalar(psnr, image.device, self._score_dtype(), "psnr")
        self._keep_if(score > self._best_score, step, image, score)
        return score
