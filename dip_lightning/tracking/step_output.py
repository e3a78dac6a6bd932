"""What one training step hands on: the keys of the dict a method's ``training_step`` returns.

Lightning back-propagates ``outputs["loss"]`` and passes the whole dict (the loss detached) to
every callback's ``on_train_batch_end`` as ``outputs``. The other entries are what the method's
trajectory (:mod:`dip_lightning.methods.trajectory`) recorded for the step, detached and on the
training device, so that callbacks (stopping, image logging) read the step's output from there
instead of from attributes of the module. This module imports nothing of the project, so the
stopping and tracking packages use it without importing the methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

LOSS = "loss"
"""The training loss (the one key Lightning itself needs)."""
IMAGE = "image"
"""The network output of the step, (1, C, H, W); the replicates' mean in a replicated run."""
MISFIT = "misfit"
"""The data misfit ||A x - y|| of that output, 0-dim."""
PSNR = "psnr"
"""Its PSNR against the ground truth, 0-dim; None when the problem has none."""
EMA = "ema"
"""The output EMA after this step, (1, C, H, W)."""
EMA_LAG = "ema_lag"
"""The mean age of the outputs in the EMA, in steps: decay / (1 - decay), 99 for 0.99. The EMA read
this many steps after step t is centred on t."""

StepOutput = dict[str, Any]


def step_output(
    loss: Tensor, image: Tensor, misfit: Tensor, psnr: Tensor | None, ema: Tensor, ema_lag: int = 0
) -> StepOutput:
    """The dict ``training_step`` returns (``loss`` keeps its graph; the rest is detached)."""
    return {LOSS: loss, IMAGE: image, MISFIT: misfit, PSNR: psnr, EMA: ema, EMA_LAG: ema_lag}


def value(outputs: Any, key: str) -> Any:
    """``outputs[key]``, or None when the step returned no such entry (or no dict at all)."""
    return outputs.get(key) if isinstance(outputs, Mapping) else None


def output_image(outputs: Any, reader: str) -> Tensor:
    """The step's output image, or a RuntimeError saying that ``reader`` needs it."""
    image = value(outputs, IMAGE)
    if image is None:
        raise RuntimeError(
            f"{reader} needs the output image of every training step: training_step must return a "
            f"dict with the key {IMAGE!r} (see dip_lightning.tracking.step_output)"
        )
    return image
