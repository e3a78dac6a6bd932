"""The part of a method's state that is not in its ``state_dict``, for checkpoints.

Lightning's checkpoint holds the network, the registered buffers (peak PSNR, best image), the
optimiser, the step counters and the callbacks' states. A resumed run must also continue the
output EMA, the curves and the random streams, or its results would differ from a run that was
never stopped. Everything here is tensors and primitive containers, so the checkpoint loads with
``torch.load(weights_only=True)``. The record also describes the run (method, image shape and a
fingerprint of the observation) so that resuming with other settings fails with a clear error.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dip_lightning import rng

if TYPE_CHECKING:
    from dip_lightning.methods.base import DeepImagePrior

KEY = "dip_lightning"
FORMAT = 1


def fingerprint(observation: Tensor) -> str:
    """A short hash of the measurement: equal only for the same data, operator, noise and seed."""
    data = observation.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _stack(history: list[Tensor]) -> Tensor:
    return torch.stack(history).detach().cpu() if history else torch.zeros(0)


def capture(method: DeepImagePrior) -> dict[str, Any]:
    """The record stored under :data:`KEY` in a checkpoint."""
    problem = method.problem
    latest = method.latest_image
    return {
        "format": FORMAT,
        "method": type(method).__name__,
        "image_shape": [int(s) for s in problem.image_shape],
        "channels": int(problem.channels),
        "observation": fingerprint(problem.observation),
        "ema": None if method.ema is None else method.ema.state_dict(),
        "latest_image": None if latest is None else latest.detach().clone(),
        "psnr_history": _stack(method.psnr_history),
        "ema_psnr_history": _stack(method.ema_psnr_history),
        "validation_history": [dict(entry) for entry in method.validation_history],
        "rng": rng.capture(),
    }


def restore(method: DeepImagePrior, record: dict[str, Any]) -> None:
    """Continue from ``record``: EMA, last output, curves and the random streams, on the method's device.

    Called when training starts, after the method re-seeded its training noise, so that the
    saved random state wins.
    """
    device = method.device
    if record["ema"] is not None and method.ema is not None:
        restore_ema(method.ema, record["ema"], device)
    if record["latest_image"] is not None:
        method.latest_image = record["latest_image"].to(device)
    method.psnr_history = list(record["psnr_history"].to(device).unbind())
    method.ema_psnr_history = list(record["ema_psnr_history"].to(device).unbind())
    method.validation_history = [dict(entry) for entry in record["validation_history"]]
    rng.restore(record["rng"])


def restore_ema(ema: Any, saved: dict[str, Any], device: torch.device) -> None:
    """Load a saved output EMA, its shadow image moved to the method's device."""
    state = {**saved}
    if state["shadow"] is not None:
        state["shadow"] = state["shadow"].to(device)
    ema.load_state_dict(state)
