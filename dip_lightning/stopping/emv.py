"""``stopping=emv``: ES-EMV (Wang et al.), an exponentially weighted variance of the outputs."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from dip_lightning.errors import check_in_range, check_int, check_positive
from dip_lightning.stopping.base import PatienceCriterion, accumulator_dtype


class ExponentialMovingVariance(PatienceCriterion):
    """ES-EMV: like ES-WMV with an exponentially weighted variance instead of a window.

    With forgetting factor a and d = x_t - m_{t-1} (the incremental form of Finch, 2009):

        m_t = m_{t-1} + a d
        v_t = (1 - a) (v_{t-1} + a d**2)

    starting from m_0 = x_0, v_0 = 0. The score is v_t averaged over pixels and the detected step
    is the step of the smallest score. Because v starts at 0, scores are only compared after
    ``warmup`` updates: 100 by default, as in Wang et al.'s code (None: ceil(1/a), about the
    memory of the average). It keeps two images of state instead of a window of them.
    """

    name = "emv"
    _tensor_attrs = ("_mean", "_var")

    def __init__(
        self,
        alpha: float = 0.1,
        patience: int = 1000,
        *,
        warmup: int | None = 100,
        check_every: int = 10,
        history_every: int = 10,
    ) -> None:
        super().__init__(check_every=check_every, history_every=history_every)
        check_positive("stopping.criterion.alpha", alpha)
        check_in_range("stopping.criterion.alpha", alpha, 0.0, 1.0, high_open=False)
        self.alpha = float(alpha)
        self.patience = check_int("stopping.criterion.patience", patience, 1)
        default_warmup = math.ceil(1.0 / self.alpha)
        self.warmup = default_warmup if warmup is None else check_int("stopping.criterion.warmup", warmup, 0)
        self._mean: Tensor | None = None
        self._var: Tensor | None = None
        self._count = 0

    def _describe(self) -> str:
        return f"alpha={self.alpha}, patience={self.patience}, warmup={self.warmup}, {super()._describe()}"

    def _allocate(self, image: Tensor) -> None:
        super()._allocate(image)
        dtype = accumulator_dtype(image.device)
        self._mean = torch.zeros(image.shape, dtype=dtype, device=image.device)
        self._var = torch.zeros(image.shape, dtype=dtype, device=image.device)

    def _observe(
        self, step: int, image: Tensor, misfit: Tensor | float | None, psnr: Tensor | float | None
    ) -> Tensor | None:
        assert self._mean is not None and self._var is not None and self._best_score is not None
        x = image.to(self._mean.dtype)
        if self._count == 0:
            self._mean.copy_(x)
        else:
            delta = x - self._mean
            self._mean.add_(delta, alpha=self.alpha)
            self._var.addcmul_(delta, delta, value=self.alpha).mul_(1.0 - self.alpha)
        self._count += 1
        if self._count <= self.warmup:
            return None
        score = self._var.mean()
        self._keep_if(score < self._best_score, step, image, score)
        return score

    def _extra_state(self) -> dict[str, Any]:
        return {"count": self._count}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._count = int(state["count"])
