"""The interface every early-stopping rule implements, and the device-side bookkeeping they share.

A DIP network fitted to one noisy measurement first reproduces the image and later the noise, so
the reconstruction has to be taken near that turning point. A criterion watches one network output
per optimisation step, keeps the best image seen so far and says when training can stop. Each rule
is one module of this package (``fixed``, ``wmv``, ``emv``, ``discrepancy``, ``oracle``) plus one
YAML file in ``conf/stopping``; the callback (:mod:`dip_lightning.stopping.callback`) knows none of
them by name. A rule declares what it needs (:class:`Needs`) and what its detection means
(:attr:`StoppingCriterion.reports_detection`), and :meth:`StoppingCriterion.prepare` gets the
problem once before training, to check it and to take what the rule needs from it.

Cost: updates run every step, so nothing is copied to the host per step. Scores, the best score,
the best step and the best image stay on the image's device and are updated with branch-free
tensor operations (``torch.where``, ``masked_fill_``). The host reads a device value only every
``check_every`` updates to apply the stopping rule, so training may stop up to
``check_every - 1`` steps after the rule is met; the detected step and image are exact.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_int

# Score history is moved to the host in batches of this many entries, not one sync per entry.
_HISTORY_FLUSH = 100


@dataclass(frozen=True)
class Needs:
    """What a stopping rule needs besides the network output of every step.

    Attributes:
        ground_truth: the PSNR of the output against a known image (``psnr`` in each update);
            :meth:`StoppingCriterion.prepare` refuses a problem without a ground truth.
        misfit: the data misfit ||A x - y|| of the output (``misfit`` in each update).
        noise_level: the noise level of the measurement, which the rule takes from the problem
            (or its settings) in :meth:`StoppingCriterion.prepare`.
    """

    ground_truth: bool = False
    misfit: bool = False
    noise_level: bool = False


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 keeps running sums exact enough; MPS has no float64, so it gets float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def device_scalar(value: Tensor | float, device: torch.device, dtype: torch.dtype, what: str) -> Tensor:
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
    needs: ClassVar[Needs] = Needs()
    """What the rule reads besides the output image (see :class:`Needs`)."""
    reports_detection: ClassVar[bool] = True
    """Whether the run reports the image at :attr:`detected_step` instead of the method's own
    reconstruction. A rule that does is a choice along one trajectory of outputs, which is why a
    replicated run (several trajectories) refuses it. ``fixed`` does not: it only records."""
    # Score of "nothing detected yet"; a new score must beat it to count as a detection.
    _initial_best: ClassVar[float] = math.inf
    # Tensor attributes of a subclass that follow the image to its device and go into state_dict.
    _tensor_attrs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, check_every: int = 10, history_every: int = 10) -> None:
        self.check_every = check_int("stopping.criterion.check_every", check_every, 1)
        self.history_every = check_int("stopping.criterion.history_every", history_every, 1)
        self._updates = 0
        self._best_image: Tensor | None = None
        self._best_step: Tensor | None = None  # int64, -1 until something is detected
        self._best_score: Tensor | None = None
        self._last_score: Tensor | None = None
        self._history: list[tuple[int, float]] = []
        self._pending_steps: list[int] = []
        self._pending_scores: list[Tensor] = []

    # ----------------------------------------------------------------------------------- public

    def prepare(self, problem: Any) -> None:
        """Check the rule against ``problem`` before training and take what it needs from it.

        ``problem`` is an :class:`~dip_lightning.physics.observation.InverseProblem` (observation,
        ground truth, noise std). A rule that needs a ground truth refuses a problem without one
        here, so a bad combination fails before the first step; rules that need more (a noise
        level, a network of their own) extend this.
        """
        if self.needs.ground_truth and problem.ground_truth is None:
            raise ConfigError(
                "stopping",
                self.name,
                "needs a ground-truth image; this problem has none, so choose a rule that does not "
                "(e.g. stopping=wmv or stopping=fixed)",
            )

    def stop_reason(self) -> str:
        """Why the rule ended the run, in words (for the run's summary)."""
        return "its rule was met"

    def details(self) -> dict[str, Any]:
        """Settings the rule worked out in :meth:`prepare`, for the run's summary (none here)."""
        return {}

    def update(
        self,
        step: int,
        image: Tensor,
        misfit: Tensor | float | None = None,
        psnr: Tensor | float | None = None,
    ) -> bool:
        """Take the output of training step ``step``; return True when training should stop."""
        image = image.detach()
        self._ensure_state(image)
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
            (), self._initial_best, dtype=accumulator_dtype(image.device), device=image.device
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

    def _patience_reason(self, patience: int | None) -> str:
        """The stop reason of a rule that stops ``patience`` steps after its last improvement."""
        return f"its score had not improved for {patience} steps since step {self.detected_step}"

    def _score_dtype(self) -> torch.dtype:
        assert self._best_score is not None
        return self._best_score.dtype

    # -------------------------------------------------------------------------------- internal

    def _ensure_state(self, image: Tensor) -> None:
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


class PatienceCriterion(StoppingCriterion):
    """A rule that stops ``patience`` steps after its last new best score (ES-WMV, ES-EMV, the
    oracle with a patience); ``patience=None`` never stops."""

    patience: int | None = None

    def _should_stop(self, step: int) -> bool:
        return self._patience_exceeded(step, self.patience)

    def stop_reason(self) -> str:
        return self._patience_reason(self.patience)
