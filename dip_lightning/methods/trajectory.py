"""The record of a run's outputs, step by step: one object beside the method, not inside it.

Every training step hands its (detached) output image to :meth:`Trajectory.record`, which keeps,
on the device and without host syncs, what the run reports about the path its outputs took: the
output EMA, the latest output with its misfit ||A x - y|| and PSNR, the peak PSNR with its step
and image, the PSNR curves of the output and of the EMA, and the evaluations made during training.
A replicated run (``method.replicates=K``) hands the K replicates' outputs at once: the
trajectory keeps each replicate's EMA, output and PSNR curve as well, and records their mean as
the run's output. :meth:`Trajectory.state_dict` and :meth:`Trajectory.load_state_dict` carry all
of it through a checkpoint, for single and replicated runs alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dip_lightning.metrics.image import fast_psnr
from dip_lightning.metrics.running import ExponentialMovingAverage
from dip_lightning.physics.observation import InverseProblem

PEAK_TENSORS = ("peak_psnr", "peak_step", "peak_ema_psnr", "best_image")
"""The tensors that follow the method's device and dtype, as its buffers do."""


def psnr_per_replicate(images: Tensor, truth: Tensor) -> Tensor:
    """PSNR (data range 1) of each image of a (K, C, H, W) batch against one truth, shape (K,)."""
    mse = (images.detach().float() - truth.float()).square().flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse)


def _stack(history: list[Tensor]) -> Tensor:
    return torch.stack(history).detach().cpu() if history else torch.zeros(0)


def _unstack(saved: Tensor, device: torch.device) -> list[Tensor]:
    return list(saved.to(device).unbind())


def _clone(tensor: Tensor | None, device: torch.device | None = None) -> Tensor | None:
    if tensor is None:
        return None
    return tensor.detach().clone() if device is None else tensor.detach().to(device).clone()


@dataclass
class StepRecord:
    """What :meth:`Trajectory.record` made of one step's output (0-dim tensors on its device)."""

    image: Tensor
    misfit: Tensor
    ema: Tensor
    psnr: Tensor | None = None
    ema_psnr: Tensor | None = None


class Trajectory:
    """The outputs of one run (see the module doc).

    Args:
        problem: the problem the outputs are measured against (operator, observation, truth).
        ema_decay: weight of the output EMA.
        replicates: K; with K > 1 each step records K outputs (replicate-major) and their mean.
    """

    def __init__(self, problem: InverseProblem, ema_decay: float, replicates: int = 1) -> None:
        self.problem = problem
        self.replicates = int(replicates)
        self.ema = ExponentialMovingAverage(ema_decay)
        self.latest_image: Tensor | None = None
        self.latest_misfit: Tensor | None = None
        self.latest_psnr: Tensor | None = None
        self.peak_psnr = torch.tensor(-math.inf)
        self.peak_step = torch.tensor(-1, dtype=torch.long)
        self.peak_ema_psnr = torch.tensor(-math.inf)
        self.best_image = torch.zeros(1, problem.channels, *problem.image_shape)
        self.psnr_history: list[Tensor] = []
        self.ema_psnr_history: list[Tensor] = []
        self.validation_history: list[dict[str, float]] = []
        # Each replicate's own EMA, outputs and PSNR curve (replicated runs only).
        self.replica_ema = ExponentialMovingAverage(ema_decay) if self.replicates > 1 else None
        self.replica_images: Tensor | None = None
        self.replica_psnr_history: list[Tensor] = []

    @property
    def ema_lag(self) -> int:
        """Mean age of the outputs averaged in the EMA, decay / (1 - decay) steps, rounded."""
        decay = self.ema.decay
        return round(decay / (1.0 - decay)) if decay < 1.0 else 0

    # ------------------------------------------------------------------ recording
    @torch.no_grad()
    def record(self, step: int, image: Tensor) -> StepRecord:
        """Take the detached output of training step ``step``: (1, C, H, W), or (K, C, H, W) for K
        replicates. Runs on the device with branch-free updates (no host sync)."""
        if self.replica_ema is not None:
            self.replica_images = image
            self.replica_ema.update(image)
            truth = self.problem.ground_truth
            if truth is not None:
                self.replica_psnr_history.append(psnr_per_replicate(self.problem.aligned(image), truth))
            image = image.mean(dim=0, keepdim=True)
        problem = self.problem
        self.latest_image = image
        self.latest_misfit = torch.linalg.vector_norm(problem.operator(image) - problem.observation)
        self.ema.update(image)
        ema = self.ema.value
        entry = StepRecord(image=image, misfit=self.latest_misfit, ema=ema)
        if problem.ground_truth is None:
            self.latest_psnr = None
            return entry
        # Scored after the operator's alignment (the identity unless A has ambiguities).
        psnr = fast_psnr(problem.aligned(image), problem.ground_truth)
        ema_psnr = fast_psnr(problem.aligned(ema), problem.ground_truth)
        self.latest_psnr = psnr
        is_better = psnr > self.peak_psnr
        self.best_image.copy_(torch.where(is_better, image, self.best_image))
        self.peak_step.copy_(torch.where(is_better, step, self.peak_step))
        self.peak_psnr.copy_(torch.maximum(psnr, self.peak_psnr))
        self.peak_ema_psnr.copy_(torch.maximum(ema_psnr, self.peak_ema_psnr))
        self.psnr_history.append(psnr)
        self.ema_psnr_history.append(ema_psnr)
        entry.psnr, entry.ema_psnr = psnr, ema_psnr
        return entry

    def add_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        """Keep the metrics of an evaluation during training (the ``validation`` curves)."""
        self.validation_history.append({"step": int(step), **metrics})

    # ------------------------------------------------------------------ summaries
    def peak_summary(self) -> dict[str, float]:
        """Peak PSNR of the output and of the EMA over the run, with the step of the peak."""
        if self.problem.ground_truth is None or self.peak_step.item() < 0:
            return {}
        return {
            "peak_psnr": float(self.peak_psnr),
            "peak_step": int(self.peak_step),
            "peak_psnr_ema": float(self.peak_ema_psnr),
        }

    def replicate_peaks(self) -> list[dict[str, float]]:
        """Each replicate's peak PSNR and its step (empty without a truth or replicates)."""
        if not self.replica_psnr_history:
            return []
        history = torch.stack(self.replica_psnr_history).cpu()
        return [
            {"peak_psnr": float(history[:, k].max()), "peak_step": int(history[:, k].argmax())}
            for k in range(history.shape[1])
        ]

    def psnr_curves(self) -> dict[str, Any]:
        """The curves of ``curves.json``: PSNR of the output and of its EMA at every step (one host
        copy at the end), under ``validation`` the step and metrics of every evaluation and, for a
        replicated run, each replicate's PSNR curve (``psnr_replicates``)."""
        curves: dict[str, Any] = {}
        for name, history in (("psnr", self.psnr_history), ("psnr_ema", self.ema_psnr_history)):
            curves[name] = torch.stack(history).cpu().tolist() if history else []
        curves["validation"] = self.validation_curve()
        if self.replica_ema is not None:
            history = self.replica_psnr_history
            curves["psnr_replicates"] = torch.stack(history).T.cpu().tolist() if history else []
        return curves

    def validation_curve(self) -> dict[str, list[float | None]]:
        """The evaluations during training as columns: ``step`` and one list per metric."""
        names: list[str] = []
        for entry in self.validation_history:
            names += [name for name in entry if name not in names]
        return {name: [entry.get(name) for entry in self.validation_history] for name in names}

    # ------------------------------------------------------------------ device and checkpoints
    def apply_to_peaks(self, fn: Callable[[Tensor], Tensor]) -> None:
        """Apply a module's tensor conversion (``.to``, ``.cpu``, ``.double``) to the peak tensors,
        so that they follow the method's device and dtype exactly as its buffers do."""
        for name in PEAK_TENSORS:
            setattr(self, name, fn(getattr(self, name)))

    def state_dict(self) -> dict[str, Any]:
        """Everything recorded so far, as CPU tensors and primitive containers (a checkpoint loads
        with ``torch.load(weights_only=True)``)."""
        state: dict[str, Any] = {
            "replicates": self.replicates,
            "ema": self.ema.state_dict(),
            "latest_image": _clone(self.latest_image, torch.device("cpu")),
            "psnr_history": _stack(self.psnr_history),
            "ema_psnr_history": _stack(self.ema_psnr_history),
            "validation_history": [dict(entry) for entry in self.validation_history],
            **{name: _clone(getattr(self, name), torch.device("cpu")) for name in PEAK_TENSORS},
        }
        if self.replica_ema is not None:
            state["replica_ema"] = self.replica_ema.state_dict()
            state["replica_images"] = _clone(self.replica_images, torch.device("cpu"))
            state["replica_psnr_history"] = _stack(self.replica_psnr_history)
        return state

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Continue from :meth:`state_dict`'s record, with its tensors on ``device``.

        The peak tensors keep the dtype they were saved in (the method's); a record of another
        number of replicates is refused (checked before training by the checkpoint reader).
        """
        if int(state["replicates"]) != self.replicates:
            raise ValueError(f"the record holds {state['replicates']} replicates, not {self.replicates}")
        device = torch.device(device)
        _load_ema(self.ema, state["ema"], device)
        self.latest_image = _clone(state["latest_image"], device)
        self.psnr_history = _unstack(state["psnr_history"], device)
        self.ema_psnr_history = _unstack(state["ema_psnr_history"], device)
        self.validation_history = [dict(entry) for entry in state["validation_history"]]
        for name in PEAK_TENSORS:
            setattr(self, name, _clone(state[name], device))
        if self.replica_ema is not None:
            _load_ema(self.replica_ema, state["replica_ema"], device)
            self.replica_images = _clone(state["replica_images"], device)
            self.replica_psnr_history = _unstack(state["replica_psnr_history"], device)


def _load_ema(ema: ExponentialMovingAverage, saved: dict[str, Any], device: torch.device) -> None:
    """Load a saved output EMA, its shadow image moved to ``device``."""
    state = {**saved}
    if state["shadow"] is not None:
        state["shadow"] = state["shadow"].to(device)
    ema.load_state_dict(state)
