"""The part of a run's state that is not in the method's ``state_dict``, for checkpoints.

Lightning's checkpoint holds the network (and an operator fitted with it), the optimiser, the
step counters and the callbacks' states. A resumed run must also continue the trajectory of its
outputs (EMA, peak, curves; :class:`~dip_lightning.methods.trajectory.Trajectory`), the random
streams and, in a replicated run, each replicate's noise stream, or its results would differ from
a run that was never stopped. Everything here is tensors and primitive containers, so the
checkpoint loads with ``torch.load(weights_only=True)``. The record also describes the run
(method, image shape and a fingerprint of the observation) so that resuming with other settings
fails with a clear error.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

from dip_lightning import rng
from dip_lightning.methods.trajectory import Trajectory
from dip_lightning.physics.observation import InverseProblem

KEY = "dip_lightning"
FORMAT = 2
"""Version of the record; 2 keeps the whole trajectory (peak included) under ``trajectory``."""


def fingerprint(observation: Tensor) -> str:
    """A short hash of the measurement: equal only for the same data, operator, noise and seed."""
    observation = observation.detach()
    if observation.is_complex():  # both parts count: view them as a trailing axis of two reals
        observation = torch.view_as_real(observation)
    data = observation.to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def capture(
    method: str, problem: InverseProblem, trajectory: Trajectory, replica_noise: list[Tensor] | None = None
) -> dict[str, Any]:
    """The record stored under :data:`KEY` in a checkpoint."""
    return {
        "format": FORMAT,
        "method": method,
        "image_shape": [int(s) for s in problem.image_shape],
        "channels": int(problem.channels),
        "observation": fingerprint(problem.observation),
        "trajectory": trajectory.state_dict(),
        "replica_noise": replica_noise,
        "rng": rng.capture(),
    }


def restore(record: dict[str, Any], trajectory: Trajectory, device: torch.device) -> None:
    """Continue the trajectory (on ``device``) and the global random streams from ``record``.

    Called when training starts, after the method re-seeded its training noise, so that the
    saved random state wins. The replicas' own streams are the method's to restore.
    """
    trajectory.load_state_dict(record["trajectory"], device)
    rng.restore(record["rng"])
