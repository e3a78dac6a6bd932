"""``stopping=wmv``: ES-WMV (Wang et al.), the windowed moving variance of the outputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dip_lightning.errors import check_int
from dip_lightning.stopping.base import PatienceCriterion, accumulator_dtype


class WindowedMovingVariance(PatienceCriterion):
    """ES-WMV: detect the step where the variance of the last ``window`` outputs is smallest.

    The score at step t is the mean over pixels of the per-pixel population variance (dividing by
    ``window``) of the outputs of steps t-window+1 .. t. The detected step is the newest step of
    the window with the smallest score, and the reported image is the output at that step.
    Training stops after ``patience`` steps without a new minimum. No score exists before the
    window is full.

    Cost per update is O(1) images. A device ring buffer holds the window; the per-pixel sum S of
    the window and the total sum of squares T get the new output added and the evicted one
    subtracted (float64), and score = (T - ||S||**2 / W) / (W n) for n pixels. To stop rounding
    from drifting, a second pair of sums only ever adds the new outputs; every ``window`` updates
    it holds exactly the current window, replaces the running pair and restarts from zero. This
    costs one extra image addition per step instead of a burst that re-reads the whole buffer.
    """

    name = "wmv"
    _tensor_attrs = ("_buffer", "_sq_norms", "_sum", "_sum_sq", "_fresh_sum", "_fresh_sum_sq")

    def __init__(
        self, window: int = 100, patience: int = 1000, *, check_every: int = 10, history_every: int = 10
    ) -> None:
        super().__init__(check_every=check_every, history_every=history_every)
        self.window = check_int("stopping.criterion.window", window, 2)
        self.patience = check_int("stopping.criterion.patience", patience, 1)
        self._buffer: Tensor | None = None  # (window, *image shape), ring of the latest outputs
        self._sq_norms: Tensor | None = None  # (window,), ||x||**2 of each buffered output
        self._sum: Tensor | None = None  # per-pixel sum over the window
        self._sum_sq: Tensor | None = None  # 0-dim, sum of squares over window and pixels
        self._fresh_sum: Tensor | None = None  # the same two sums since the last ring wrap
        self._fresh_sum_sq: Tensor | None = None
        self._count = 0

    def _describe(self) -> str:
        return f"window={self.window}, patience={self.patience}, {super()._describe()}"

    def _allocate(self, image: Tensor) -> None:
        super()._allocate(image)
        dtype = accumulator_dtype(image.device)
        self._buffer = image.new_zeros((self.window, *image.shape))
        self._sq_norms = torch.zeros(self.window, dtype=dtype, device=image.device)
        self._sum = torch.zeros(image.shape, dtype=dtype, device=image.device)
        self._fresh_sum = torch.zeros_like(self._sum)
        self._sum_sq = torch.zeros((), dtype=dtype, device=image.device)
        self._fresh_sum_sq = torch.zeros_like(self._sum_sq)

    def _observe(
        self, step: int, image: Tensor, misfit: Tensor | float | None, psnr: Tensor | float | None
    ) -> Tensor | None:
        self._push(image)
        if self._count < self.window:
            return None
        score = self._variance()
        assert self._best_score is not None
        self._keep_if(score < self._best_score, step, image, score)
        return score

    def _push(self, image: Tensor) -> None:
        """Put ``image`` into the ring buffer and keep the sums in step with it."""
        buffer, sq_norms = self._buffer, self._sq_norms
        total, total_sq = self._sum, self._sum_sq
        fresh, fresh_sq = self._fresh_sum, self._fresh_sum_sq
        assert buffer is not None and sq_norms is not None and total is not None and total_sq is not None
        assert fresh is not None and fresh_sq is not None
        slot = self._count % self.window
        new = image.to(total.dtype)
        new_sq = torch.dot(new.reshape(-1), new.reshape(-1))
        if self._count >= self.window:
            total.sub_(buffer[slot])  # computed in float64
            total_sq.sub_(sq_norms[slot])
        total.add_(new)
        total_sq.add_(new_sq)
        fresh.add_(new)
        fresh_sq.add_(new_sq)
        buffer[slot].copy_(image)
        sq_norms[slot].copy_(new_sq)
        self._count += 1
        if self._count % self.window == 0:
            # The fresh sums now cover exactly the window: they become the running sums.
            self._sum, self._fresh_sum = fresh, total.zero_()
            self._sum_sq, self._fresh_sum_sq = fresh_sq, total_sq.zero_()

    def _variance(self) -> Tensor:
        """Mean over pixels of the per-pixel population variance over the window."""
        assert self._sum is not None and self._sum_sq is not None
        flat = self._sum.reshape(-1)
        spread = self._sum_sq - torch.dot(flat, flat) / self.window
        return spread.clamp_min(0.0) / (self.window * flat.numel())

    def _extra_state(self) -> dict[str, Any]:
        return {"count": self._count}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        buffer = state["_buffer"]
        if buffer is not None and buffer.shape[0] != self.window:
            raise ValueError(
                f"the saved stopping state has a window of {buffer.shape[0]} steps but "
                f"stopping.criterion.window={self.window}; resume with the same window"
            )
        self._count = int(state["count"])
