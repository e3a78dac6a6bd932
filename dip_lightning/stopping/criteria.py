"""Early-stopping rules for Deep Image Prior.

A DIP network fitted to one noisy measurement first reproduces the image and later the noise, so
the reconstruction has to be taken near that turning point. Each criterion below watches one
network output per optimisation step, keeps the best image seen so far and says when training
can stop:

* :class:`FixedSteps` never stops; the last output is the result.
* :class:`WindowedMovingVariance` (ES-WMV): the variance of the outputs over a sliding window is
  smallest where the outputs settle before noise fitting starts.
* :class:`ExponentialMovingVariance` (ES-EMV): the same idea with an exponentially weighted
  variance, which needs no image buffer.
* :class:`DiscrepancyPrinciple`: stop once the data misfit reaches the noise level.
* :class:`Oracle`: the best PSNR against a known ground truth (for studies only).

Cost: these updates run every step, so nothing is copied to the host per step. Scores, the best
score, the best step and the best image stay on the image's device and are updated with
branch-free tensor operations (``torch.where``, ``masked_fill_``). The host reads a device value
only every ``check_every`` updates to apply the stopping rule, so training may stop up to
``check_every - 1`` steps after the rule is met; the detected step and image are exact.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_positive

# Score history is moved to the host in batches of this many entries, not one sync per entry.
_HISTORY_FLUSH = 100


def _check_int(setting: str, value: object, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum``, else raise ConfigError."""
    if isinstance(value, bool):
        raise ConfigError(setting, value, f"must be an integer >= {minimum}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(setting, value, f"must be an integer >= {minimum}") from None
    if number < minimum:
        raise ConfigError(setting, value, f"must be an integer >= {minimum}")
    return number


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 keeps running sums exact enough; MPS has no float64, so it gets float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def _device_scalar(value: Tensor | float, device: torch.device, dtype: torch.dtype, what: str) -> Tensor:
    """A 0-dim tensor on ``device`` without a blocking host-to-device copy."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{what} must be a single number, got a tensor of shape {tuple(value.shape)}")
        return value.detach().reshape(()).to(device=device, dtype=dtype)
    # torch.full passes the number as a kernel argument instead of copying memory.
    return torch.full((), float(value), dtype=dtype, device=device)


def _clone(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach().clone()


class StoppingCriterion(ABC):
    """Watches the network output step by step, keeps the best image and decides when to stop.

    Args:
        check_every: read the stopping rule on the host every this many updates (see module docs).
        history_every: keep the score in :attr:`score_history` every this many updates.
    """

    name: ClassVar[str] = "criterion"
    # Score of "nothing detected yet"; a new score must beat it to count as a detection.
    _initial_best: ClassVar[float] = math.inf
    # Tensor attributes of a subclass that follow the image to its device and go into state_dict.
    _tensor_attrs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, check_every: int = 10, history_every: int = 10) -> None:
        self.check_every = _check_int("stopping.criterion.check_every", check_every, 1)
        self.history_every = _check_int("stopping.criterion.history_every", history_every, 1)
        self._updates = 0
        self._best_image: Tensor | None = None
        self._best_step: Tensor | None = None  # int64, -1 until something is detected
        self._best_score: Tensor | None = None
        self._last_score: Tensor | None = None
        self._history: list[tuple[int, float]] = []
        self._pending_steps: list[int] = []
        self._pending_scores: list[Tensor] = []

    # ----------------------------------------------------------------------------------- public

    def update(
        self,
        step: int,
        image: Tensor,
        misfit: Tensor | float | None = None,
        psnr: Tensor | float | None = None,
    ) -> bool:
        """Take the output of training step ``step``; return True when training should stop."""
        image = image.detach()
        self._prepare(image)
        score = self._observe(step, image, misfit, psnr)
        if score is not None:
            self._last_score = score
            if self._updates % self.history_every == 0:
                self._record(step, score)
        self._updates += 1
        if self._updates % self.check_every != 0:
            return False
        return self._should_stop(step)

    @property
    def checked(self) -> bool:
        """Whether the last :meth:`update` applied the stopping rule (every ``check_every`` updates).

        Data-parallel ranks update equally often, so they all reach a check at the same step and
        can agree on the decision there without a collective call at every step.
        """
        return self._updates > 0 and self._updates % self.check_every == 0

    @property
    def detected_step(self) -> int | None:
        """Step of the reported reconstruction, or None while nothing has been detected."""
        if self._best_step is None:
            return None
        step = int(self._best_step)
        return None if step < 0 else step

    @property
    def detected_step_tensor(self) -> Tensor | None:
        """:attr:`detected_step` as the device tensor (-1 before a detection), read without a sync."""
        return self._best_step

    @property
    def detected_image(self) -> Tensor | None:
        """A copy of the output at :attr:`detected_step`, on the image's device."""
        if self.detected_step is None or self._best_image is None:
            return None
        return self._best_image.clone()

    @property
    def best_score(self) -> float | None:
        """The criterion's score at :attr:`detected_step` (None when it has no score)."""
        if self.detected_step is None or self._best_score is None:
            return None
        return float(self._best_score)

    @property
    def last_score(self) -> float | None:
        """The most recent score (None before the first score exists)."""
        return None if self._last_score is None else float(self._last_score)

    @property
    def score_history(self) -> list[tuple[int, float]]:
        """(step, score) pairs kept every ``history_every`` updates, for plots and logs."""
        self._flush_history()
        return list(self._history)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after a resume: tensors, ints and the score history."""
        self._flush_history()
        history = torch.tensor(self._history, dtype=torch.float64).reshape(-1, 2)
        state: dict[str, Any] = {
            "name": self.name,
            "updates": self._updates,
            "best_image": _clone(self._best_image),
            "best_step": _clone(self._best_step),
            "best_score": _clone(self._best_score),
            "last_score": _clone(self._last_score),
            "history": history,
        }
        for attr in self._tensor_attrs:
            state[attr] = _clone(getattr(self, attr))
        state.update(self._extra_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; tensors move to the image device on the next update."""
        if state.get("name") != self.name:
            raise ValueError(
                f"cannot load stopping state saved by criterion {state.get('name')!r} into {self.name!r}"
            )
        self._updates = int(state["updates"])
        self._best_image = _clone(state["best_image"])
        self._best_step = _clone(state["best_step"])
        self._best_score = _clone(state["best_score"])
        self._last_score = _clone(state["last_score"])
        self._history = [(int(s), float(v)) for s, v in state["history"].tolist()]
        self._pending_steps, self._pending_scores = [], []
        for attr in self._tensor_attrs:
            setattr(self, attr, _clone(state[attr]))
        self._load_extra_state(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"

    # ------------------------------------------------------------------------- for subclasses

    @abstractmethod
    def _observe(
        self, step: int, image: Tensor, misfit: Tensor | float | None, psnr: Tensor | float | None
    ) -> Tensor | None:
        """Update the statistics and the best image; return this step's score or None."""

    @abstractmethod
    def _should_stop(self, step: int) -> bool:
        """The stopping rule; may read device values (called every ``check_every`` updates)."""

    def _describe(self) -> str:
        return f"check_every={self.check_every}"

    def _allocate(self, image: Tensor) -> None:
        """Create the device state for images like ``image`` (first update only)."""
        self._best_image = torch.zeros_like(image)
        self._best_step = torch.full((), -1, dtype=torch.int64, device=image.device)
        self._best_score = torch.full(
            (), self._initial_best, dtype=_accumulator_dtype(image.device), device=image.device
        )

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` saved."""
        return None

    def _keep_if(self, is_better: Tensor, step: int, image: Tensor, score: Tensor) -> None:
        """Make (step, image, score) the detection where the device flag ``is_better`` is set."""
        assert self._best_score is not None and self._best_step is not None
        assert self._best_image is not None
        self._best_score.copy_(torch.where(is_better, score.to(self._best_score.dtype), self._best_score))
        self._best_step.masked_fill_(is_better, step)
        # ``out`` aliasing an input is safe for elementwise ops and saves a temporary image.
        torch.where(is_better, image, self._best_image, out=self._best_image)

    def _patience_exceeded(self, step: int, patience: int | None) -> bool:
        """True when ``patience`` steps passed since the detection (one host sync)."""
        if patience is None or self._best_step is None:
            return False
        best = int(self._best_step)
        return best >= 0 and step - best >= patience

    def _score_dtype(self) -> torch.dtype:
        assert self._best_score is not None
        return self._best_score.dtype

    # -------------------------------------------------------------------------------- internal

    def _prepare(self, image: Tensor) -> None:
        if self._best_image is None:
            self._allocate(image)
        elif self._best_image.shape != image.shape:
            raise ValueError(
                f"{type(self).__name__} got an image of shape {tuple(image.shape)} after images of "
                f"shape {tuple(self._best_image.shape)}; the output shape must not change during training"
            )
        elif self._best_image.device != image.device:
            self._move_to(image.device)

    def _move_to(self, device: torch.device) -> None:
        self._flush_history()
        names = ("_best_image", "_best_step", "_best_score", "_last_score", *self._tensor_attrs)
        for attr in names:
            value = getattr(self, attr)
            if value is not None:
                setattr(self, attr, value.to(device))

    def _record(self, step: int, score: Tensor) -> None:
        self._pending_steps.append(step)
        self._pending_scores.append(score.detach().clone())
        if len(self._pending_scores) >= _HISTORY_FLUSH:
            self._flush_history()

    def _flush_history(self) -> None:
        if not self._pending_scores:
            return
        values = torch.stack(self._pending_scores).cpu().tolist()  # one transfer for the batch
        self._history.extend(zip(self._pending_steps, values))
        self._pending_steps, self._pending_scores = [], []


class FixedSteps(StoppingCriterion):
    """Never stops: training runs to ``max_steps`` and the last output is the reconstruction.

    The data misfit, when given, is kept as the score so that runs can still be plotted.
    """

    name = "fixed"

    def _observe(
        self, step: int, image: Tensor, misfit: Tensor | float | None, psnr: Tensor | float | None
    ) -> Tensor | None:
        assert self._best_image is not None and self._best_step is not None
        self._best_image.copy_(image)
        self._best_step.fill_(step)
        if misfit is None:
            return None
        score = _device_scalar(misfit, image.device, self._score_dtype(), "misfit")
        assert self._best_score is not None
        self._best_score.copy_(score)
        return score

    def _should_stop(self, step: int) -> bool:
        return False


class WindowedMovingVariance(StoppingCriterion):
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
        self.window = _check_int("stopping.criterion.window", window, 2)
        self.patience = _check_int("stopping.criterion.patience", patience, 1)
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
        dtype = _accumulator_dtype(image.device)
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

    def _should_stop(self, step: int) -> bool:
        return self._patience_exceeded(step, self.patience)

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


class ExponentialMovingVariance(StoppingCriterion):
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
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 < alpha <= 1.0:
            raise ConfigError("stopping.criterion.alpha", alpha, "must lie in (0, 1]")
        self.alpha = float(alpha)
        self.patience = _check_int("stopping.criterion.patience", patience, 1)
        default_warmup = math.ceil(1.0 / self.alpha)
        self.warmup = default_warmup if warmup is None else _check_int("stopping.criterion.warmup", warmup, 0)
        self._mean: Tensor | None = None
        self._var: Tensor | None = None
        self._count = 0

    def _describe(self) -> str:
        return f"alpha={self.alpha}, patience={self.patience}, warmup={self.warmup}, {super()._describe()}"

    def _allocate(self, image: Tensor) -> None:
        super()._allocate(image)
        dtype = _accumulator_dtype(image.device)
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

    def _should_stop(self, step: int) -> bool:
        return self._patience_exceeded(step, self.patience)

    def _extra_state(self) -> dict[str, Any]:
        return {"count": self._count}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._count = int(state["count"])


ESTIMATE = "estimate"


def _noise_std_setting(value: object) -> float | str | None:
    """A positive finite number, None (automatic) or ``"estimate"``; anything else is refused."""
    if value is None or value == ESTIMATE:
        return value  # type: ignore[return-value]
    allowed = f"must be a number > 0, null (automatic) or '{ESTIMATE}'"
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError("stopping.criterion.noise_std", value, allowed)
    return float(value)


class DiscrepancyPrinciple(StoppingCriterion):
    """Morozov's discrepancy principle: stop at the first step with ||A x - y|| <= tau * delta.

    delta = noise_std * sqrt(m) is the expected norm of the noise in m measurement elements. With
    ``noise_std=None`` the caller (the :class:`~dip_lightning.stopping.callback.EarlyStopping`
    callback) provides it through :meth:`set_noise_level`: the simulated noise level when the
    problem knows it, else an estimate from the observation; ``noise_std="estimate"`` always
    estimates, as for a real measurement. The score is the misfit; the detected step is the first
    step that meets the bound.
    """

    name = "discrepancy"
    _tensor_attrs = ("_reached",)

    def __init__(
        self,
        tau: float = 1.1,
        noise_std: float | str | None = None,
        *,
        check_every: int = 10,
        history_every: int = 10,
    ) -> None:
        super().__init__(check_every=check_every, history_every=history_every)
        if isinstance(tau, bool) or not isinstance(tau, int | float) or not tau >= 1.0 or math.isinf(tau):
            raise ConfigError("stopping.criterion.tau", tau, "must be a finite number >= 1")
        self.tau = float(tau)
        self.noise_std: float | str | None = _noise_std_setting(noise_std)
        self.noise_std_used: float | None = None
        self.delta: float | None = None
        self.threshold: float | None = None
        self._reached: Tensor | None = None

    def _describe(self) -> str:
        return f"tau={self.tau}, noise_std={self.noise_std}, {super()._describe()}"

    def set_noise_level(self, delta_per_element: float, num_elements: int) -> None:
        """Set delta from the noise std of one measurement element and the number of elements."""
        sigma = float(check_positive("stopping.criterion.noise_std", delta_per_element))
        if math.isinf(sigma):
            raise ConfigError("stopping.criterion.noise_std", delta_per_element, "must be finite")
        count = operator.index(num_elements)
        if count < 1:
            raise ValueError(f"the measurement must have at least one element, got {num_elements}")
        self.noise_std_used = sigma
        self.delta = sigma * math.sqrt(count)
        self.threshold = self.tau * self.delta

    def _allocate(self, image: Tensor) -> None:
        super()._allocate(image)
        self._reached = torch.zeros((), dtype=torch.bool, device=image.device)

    def _observe(
        self, step: int, image: Tensor, misfit: Tensor | float | None, psnr: Tensor | float | None
    ) -> Tensor | None:
        if misfit is None:
            raise ValueError("DiscrepancyPrinciple needs the data misfit ||A x - y|| at every step")
        if self.threshold is None:
            raise RuntimeError(
                "DiscrepancyPrinciple has no noise level: call set_noise_level() first "
                "(the EarlyStopping callback does this when fitting starts)"
            )
        assert self._reached is not None
        score = _device_scalar(misfit, image.device, self._score_dtype(), "misfit")
        first = (score <= self.threshold).logical_and_(self._reached.logical_not())
        self._keep_if(first, step, image, score)
        self._reached.logical_or_(first)
        return score

    def _should_stop(self, step: int) -> bool:
        return self._reached is not None and bool(self._reached)

    def _extra_state(self) -> dict[str, Any]:
        return {
            "noise_std_used": self.noise_std_used,
            "delta": self.delta,
            "threshold": self.threshold,
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.noise_std_used = state["noise_std_used"]
        self.delta = state["delta"]
        self.threshold = state["threshold"]


class Oracle(StoppingCriterion):
    """The step of best PSNR against the ground truth: an upper bound for the other criteria.

    It only exists for studies with a known image. With ``patience=None`` it never stops early;
    otherwise it stops ``patience`` steps after the last PSNR improvement.
    """

    name = "oracle"
    _initial_best = -math.inf

    def __init__(
        self, patience: int | None = None, *, check_every: int = 10, history_every: int = 10
    ) -> None:
        super().__init__(check_every=check_every, history_every=history_every)
        self.patience = None if patience is None else _check_int("stopping.criterion.patience", patience, 1)

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
        score = _device_scalar(psnr, image.device, self._score_dtype(), "psnr")
        self._keep_if(score > self._best_score, step, image, score)
        return score

    def _should_stop(self, step: int) -> bool:
        return self._patience_exceeded(step, self.patience)
