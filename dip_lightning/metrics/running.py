"""Streaming statistics of tensors: running mean/variance and exponential moving averages.

SGLD and MC-dropout DIP average hundreds of network outputs; keeping them all would cost memory
proportional to the number of samples, so these accumulate in O(1) memory and checkpoint as
plain tensors and ints.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dip_lightning.errors import check_in_range, check_int

__all__ = ["ExponentialMovingAverage", "RunningMoments", "ThinnedSamples"]


def _check_shape(expected: torch.Size, got: torch.Size, what: str) -> None:
    """Raise ValueError naming both shapes when an update does not match the running state."""
    if expected != got:
        raise ValueError(f"{what} must have shape {tuple(expected)}, got {tuple(got)}")


def _accumulator(x: Tensor) -> torch.dtype:
    """float64, or complex128 for complex samples (measurements such as MRI k-space)."""
    return torch.complex128 if x.is_complex() else torch.float64


class RunningMoments:
    """Running per-element mean and population variance (Welford, merged with Chan et al.).

    Accumulators are float64 on the device of the first update, so that averaging thousands of
    float32 samples does not lose precision. ``mean`` and ``variance`` are returned in float64
    (the mean in complex128 for complex samples; their variance is the mean of |x - mean|^2).
    """

    def __init__(self) -> None:
        self._count = 0
        self._mean: Tensor | None = None
        self._m2: Tensor | None = None

    @property
    def count(self) -> int:
        """Number of samples seen so far."""
        return self._count

    def update(self, x: Tensor) -> None:
        """Add one sample."""
        self.update_batch(x.unsqueeze(0))

    def update_batch(self, xs: Tensor) -> None:
        """Add the samples stacked along the leading axis of ``xs`` in one parallel merge."""
        if xs.ndim < 1:
            raise ValueError("update_batch needs a leading sample axis, got a 0-d tensor")
        n_b = xs.shape[0]
        if n_b == 0:
            return
        xs = xs.detach().to(_accumulator(xs))
        if self._mean is None or self._m2 is None:
            self._mean = torch.zeros(xs.shape[1:], dtype=xs.dtype, device=xs.device)
            self._m2 = torch.zeros(xs.shape[1:], dtype=torch.float64, device=xs.device)
        _check_shape(self._mean.shape, xs.shape[1:], "each sample")
        xs = xs.to(self._mean.device)
        mean_b = xs.mean(dim=0)
        m2_b = (xs - mean_b).abs().square().sum(dim=0)
        n_a = self._count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + delta.abs().square() * (n_a * n_b / n)
        self._count = n

    def _require_samples(self) -> tuple[Tensor, Tensor]:
        if self._mean is None or self._m2 is None or self._count == 0:
            raise RuntimeError("RunningMoments has no samples yet; call update() first")
        return self._mean, self._m2

    @property
    def mean(self) -> Tensor:
        """Per-element mean of the samples (float64)."""
        return self._require_samples()[0]

    @property
    def variance(self) -> Tensor:
        """Per-element population variance (divides by count; zero after one sample)."""
        _, m2 = self._require_samples()
        return m2 / self._count

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and ints, so Lightning checkpoints can store the state."""
        return {
            "count": self._count,
            "mean": None if self._mean is None else self._mean.clone(),
            "m2": None if self._m2 is None else self._m2.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by ``state_dict``."""
        missing = {"count", "mean", "m2"} - set(state)
        if missing:
            raise ValueError(f"RunningMoments state is missing keys {sorted(missing)}")
        count, mean, m2 = int(state["count"]), state["mean"], state["m2"]
        if count < 0 or (count > 0) != (mean is not None and m2 is not None):
            raise ValueError(f"inconsistent RunningMoments state: count={count} with mean/m2 present")
        if mean is not None and m2 is not None:
            _check_shape(mean.shape, m2.shape, "m2")
            mean, m2 = mean.to(_accumulator(mean)).clone(), m2.to(torch.float64).clone()
        self._count, self._mean, self._m2 = count, mean, m2


class ExponentialMovingAverage:
    """Exponential moving average of a tensor, optionally bias-corrected as in Adam.

    The average starts at zero; with ``bias_correction`` the value is divided by
    1 - decay**steps, so a constant input is returned exactly from the first step instead of
    being dragged toward zero. Without it, early values are shrunk toward zero.
    """

    def __init__(self, decay: float = 0.99, bias_correction: bool = True) -> None:
        self.decay = float(check_in_range("method.ema_decay", decay, 0.0, 1.0))
        self.bias_correction = bias_correction
        self._steps = 0
        self._shadow: Tensor | None = None

    @property
    def steps(self) -> int:
        """Number of updates so far."""
        return self._steps

    def update(self, x: Tensor | float) -> None:
        """Blend ``x`` into the average (detached; accumulated in at least float32)."""
        x = torch.as_tensor(x).detach()
        dtype = torch.promote_types(x.dtype, torch.float32)
        if self._shadow is None:
            self._shadow = torch.zeros(x.shape, dtype=dtype, device=x.device)
        _check_shape(self._shadow.shape, x.shape, "EMA input")
        x = x.to(device=self._shadow.device, dtype=self._shadow.dtype)
        self._shadow = self._shadow * self.decay + x * (1.0 - self.decay)
        self._steps += 1

    @property
    def value(self) -> Tensor:
        """Current average (bias-corrected if enabled)."""
        if self._shadow is None or self._steps == 0:
            raise RuntimeError("ExponentialMovingAverage has no value yet; call update() first")
        if not self.bias_correction:
            return self._shadow
        return self._shadow / (1.0 - self.decay**self._steps)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, floats and ints for checkpointing."""
        return {
            "decay": self.decay,
            "bias_correction": self.bias_correction,
            "steps": self._steps,
            "shadow": None if self._shadow is None else self._shadow.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by ``state_dict`` (the decay is validated again)."""
        missing = {"decay", "bias_correction", "steps", "shadow"} - set(state)
        if missing:
            raise ValueError(f"ExponentialMovingAverage state is missing keys {sorted(missing)}")
        steps, shadow = int(state["steps"]), state["shadow"]
        if steps < 0 or (steps > 0) != (shadow is not None):
            raise ValueError(f"inconsistent ExponentialMovingAverage state: steps={steps}")
        self.decay = float(check_in_range("method.ema_decay", state["decay"], 0.0, 1.0))
        self.bias_correction = bool(state["bias_correction"])
        self._steps = steps
        self._shadow = None if shadow is None else shadow.clone()


class ThinnedSamples:
    """At most ``capacity`` samples of a stream, spread evenly over all of it.

    Every ``stride``-th sample is kept (stride 1 at first); when the store overflows, every other
    kept sample is dropped and the stride doubles, so the kept ones stay the samples at multiples
    of the stride. Memory is bounded by ``capacity`` images whatever the chain's length; the
    correlations between pixels (the test log-likelihood) are estimated from them. Capacity 0
    keeps nothing.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = check_int("method.kept_samples", capacity, 0)
        self._seen = 0
        self._stride = 1
        self._kept: list[Tensor] = []

    @property
    def count(self) -> int:
        """Number of samples kept."""
        return len(self._kept)

    def update(self, x: Tensor) -> None:
        """Offer one sample."""
        position = self._seen
        self._seen += 1
        if self.capacity == 0 or position % self._stride:
            return
        self._kept.append(x.detach().clone())
        if len(self._kept) > self.capacity:
            self._kept = self._kept[::2]
            self._stride *= 2

    def stacked(self) -> Tensor | None:
        """The kept samples stacked along a new leading axis, or None before the first."""
        return torch.stack(self._kept) if self._kept else None

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self._seen, "stride": self._stride, "kept": self.stacked()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._seen, self._stride = int(state["seen"]), int(state["stride"])
        kept = state["kept"]
        self._kept = [] if kept is None else [k.clone() for k in kept]
