"""``stopping=discrepancy``: Morozov's discrepancy principle, stop once the misfit reaches the noise."""

from __future__ import annotations

import logging
import math
import operator
from typing import Any

import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_in_range, check_positive
from dip_lightning.stopping.base import Needs, StoppingCriterion, device_scalar
from dip_lightning.stopping.noise_level import estimate_noise_std

log = logging.getLogger(__name__)

ESTIMATE = "estimate"
NOISE_FROM_CONFIG = "config (stopping.criterion.noise_std)"
NOISE_FROM_PROBLEM = "problem (known noise std)"
NOISE_ESTIMATED = "estimated from the observation (wavelet MAD)"


def real_element_count(observation: Tensor) -> int:
    """Number of real-valued measurement elements; a complex value counts as two."""
    return observation.numel() * (2 if observation.is_complex() else 1)


def _noise_std_setting(value: object) -> float | str | None:
    """A positive finite number, None (automatic) or ``"estimate"``; anything else is refused."""
    if value is None or value == ESTIMATE:
        return value  # type: ignore[return-value]
    try:
        return float(check_positive("stopping.criterion.noise_std", value))
    except ConfigError:
        allowed = f"must be a number > 0, null (automatic) or '{ESTIMATE}'"
        raise ConfigError("stopping.criterion.noise_std", value, allowed) from None


class DiscrepancyPrinciple(StoppingCriterion):
    """Morozov's discrepancy principle: stop at the first step with ||A x - y|| <= tau * delta.

    delta = noise_std * sqrt(m) is the expected norm of the noise in m real measurement elements
    (a complex element counts twice). :meth:`prepare` sets it from the configured ``noise_std``,
    else the simulated noise level when the problem knows it, else an estimate from the
    observation; ``noise_std="estimate"`` always estimates, as for a real measurement.
    :meth:`set_noise_level` sets it directly. The score is the misfit; the detected step is the
    first step that meets the bound.
    """

    name = "discrepancy"
    needs = Needs(misfit=True, noise_level=True)
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
        self.tau = float(check_in_range("stopping.criterion.tau", tau, 1.0, math.inf))
        self.noise_std: float | str | None = _noise_std_setting(noise_std)
        self.noise_std_used: float | None = None
        self.noise_std_source: str | None = None
        self.delta: float | None = None
        self.threshold: float | None = None
        self._reached: Tensor | None = None

    def _describe(self) -> str:
        return f"tau={self.tau}, noise_std={self.noise_std}, {super()._describe()}"

    def prepare(self, problem: Any) -> None:
        """Set the noise level from the settings, the problem or the observation (see the class doc)."""
        super().prepare(problem)
        sigma, source = self._noise_level(problem)
        if not sigma > 0:
            raise ConfigError(
                "stopping.criterion.noise_std",
                self.noise_std,
                f"the noise level from the {source} is {sigma}, so the misfit target would be 0 "
                "(a noise-free simulation has nothing to stop at); set stopping.criterion.noise_std > 0, "
                "simulate noise (e.g. noise=gaussian) or choose another criterion",
            )
        self.set_noise_level(sigma, real_element_count(problem.observation))
        self.noise_std_source = source
        log.info(
            "discrepancy principle: noise std %.4g from the %s; stop when misfit <= %.4g (tau=%g)",
            sigma,
            source,
            self.threshold,
            self.tau,
        )

    def _noise_level(self, problem: Any) -> tuple[float, str]:
        """The configured noise std, else the problem's, else an estimate from the observation."""
        if isinstance(self.noise_std, float):
            return self.noise_std, NOISE_FROM_CONFIG
        known = getattr(problem, "noise_std", None)
        if known is not None and self.noise_std != ESTIMATE:
            return float(known), NOISE_FROM_PROBLEM
        try:
            return estimate_noise_std(problem.observation), NOISE_ESTIMATED
        except ValueError as error:
            raise ConfigError(
                "stopping.criterion.noise_std",
                None,
                f"must be set because it cannot be estimated here ({error})",
            ) from error

    def stop_reason(self) -> str:
        return f"the misfit ||A x - y|| reached tau * delta = {self.threshold:.4g}"

    def details(self) -> dict[str, Any]:
        return {"noise_std": self.noise_std_used, "noise_std_source": self.noise_std_source}

    def set_noise_level(self, delta_per_element: float, num_elements: int) -> None:
        """Set delta from the noise std of one measurement element and the number of elements."""
        sigma = float(check_positive("stopping.criterion.noise_std", delta_per_element))
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
                "DiscrepancyPrinciple has no noise level: call prepare(problem) or "
                "set_noise_level() first (the stopping callback calls prepare when fitting starts)"
            )
        assert self._reached is not None
        score = device_scalar(misfit, image.device, self._score_dtype(), "misfit")
        first = (score <= self.threshold).logical_and_(self._reached.logical_not())
        self._keep_if(first, step, image, score)
        self._reached.logical_or_(first)
        return score

    def _should_stop(self, step: int) -> bool:
        return self._reached is not None and bool(self._reached)

    def _extra_state(self) -> dict[str, Any]:
        return {
            "noise_std_used": self.noise_std_used,
            "noise_std_source": self.noise_std_source,
            "delta": self.delta,
            "threshold": self.threshold,
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.noise_std_used = state["noise_std_used"]
        self.noise_std_source = state.get("noise_std_source")
        self.delta = state["delta"]
        self.threshold = state["threshold"]
