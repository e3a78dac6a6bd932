"""``stopping=self_validation``: self-validation early stopping (Li et al., BMVC 2021).

An autoencoder trained online on the recent network outputs learns what they have in common. While
DIP still fits the image, each new output resembles the ones before and the autoencoder
reconstructs it well; once the network starts to fit the noise, the new output carries structure
the autoencoder has not seen and its reconstruction error grows. The step of the smallest error
is the detection. The newest output is scored before the autoencoder trains on it, so it acts
as a validation sample that comes from the run itself.

The autoencoder follows the reference's (built for 512 px RGB images): stride-2 3x3 convolutions
with BatchNorm and ReLU down to a one-channel 4x4 code, four bias-free linear layers on the code,
and mirrored bilinear-upsampling blocks back to the image, ending in BatchNorm and a sigmoid.
:func:`autoencoder_stages` sizes it from the image instead of fixing seven stages.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dip_lightning.errors import ConfigError, check_int, check_positive
from dip_lightning.stopping.base import PatienceCriterion, accumulator_dtype

CODE_SIDE = 4
"""Side of the code the encoder reduces the image to: 512 px -> 4 px in the reference."""
WIDTHS = (32, 64, 128, 128, 128, 128)
"""Output channels of the reference's encoder stages before the final one-channel stage."""
LINEAR_LAYERS = 4
MIN_SIDE = 8


def autoencoder_stages(height: int, width: int) -> int:
    """Stride-2 stages that halve the shorter image side (rounding up) to at most :data:`CODE_SIDE`.

    512 px gives the reference's seven stages and a 4x4 code; 64 px gives four stages, 100 px five
    (a 4x4 code again), 8 px one. The code keeps the image's aspect ratio.
    """
    side, stages = min(height, width), 0
    while side > CODE_SIDE:
        side, stages = math.ceil(side / 2), stages + 1
    return max(stages, 1)


def stage_channels(channels: int, stages: int) -> list[int]:
    """Encoder channels from the image to the code: the reference's first widths, then 1."""
    return [channels, *[WIDTHS[min(i, len(WIDTHS) - 1)] for i in range(stages - 1)], 1]


class ValidationAutoencoder(nn.Module):
    """The reference's autoencoder with ``stages`` down- and up-sampling stages for (C, H, W) images."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.image_shape = (channels, height, width)
        stages = autoencoder_stages(height, width)
        chans = stage_channels(channels, stages)
        self.sizes = [(height, width)]
        for _ in range(stages):
            h, w = self.sizes[-1]
            self.sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
        self.encoder = nn.Sequential(
            *[self._block(chans[i], chans[i + 1], stride=2, last=False) for i in range(stages)]
        )
        code = self.sizes[-1][0] * self.sizes[-1][1]
        self.code_shape = self.sizes[-1]
        self.linear = nn.Sequential(*[nn.Linear(code, code, bias=False) for _ in range(LINEAR_LAYERS)])
        back = chans[::-1]
        self.decoder = nn.ModuleList(
            self._block(back[i], back[i + 1], stride=1, last=i == stages - 1) for i in range(stages)
        )

    @staticmethod
    def _block(into: int, out: int, *, stride: int, last: bool) -> nn.Sequential:
        activation = nn.Sigmoid() if last else nn.ReLU(inplace=True)
        return nn.Sequential(
            nn.Conv2d(into, out, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out),
            activation,
        )

    @property
    def stages(self) -> int:
        return len(self.encoder)

    def forward(self, images: Tensor) -> Tensor:
        code = self.encoder(images)
        code = self.linear(code.flatten(1)).view_as(code)
        for block, size in zip(self.decoder, reversed(self.sizes[:-1])):
            # Bilinear x2 as in the reference; sizes that were odd on the way down are matched.
            code = block(F.interpolate(code, size=size, mode="bilinear", align_corners=False))
        return code


class SelfValidation(PatienceCriterion):
    """Self-validation: the reconstruction error of the newest output under an online autoencoder.

    A queue keeps the last ``window`` outputs, clipped to [0, 1] as in the reference. Once it is
    full, every step (1) scores the newest output by ``||x - AE(x)||_2`` with the autoencoder in
    evaluation mode, (2) keeps the output when that is the smallest score so far and (3) trains
    the autoencoder for one epoch over the queue (shuffled, batches of ``batch_size``, MSE loss,
    Adam with learning rate ``lr`` created anew for each epoch, as the reference does).
    ``update_every`` > 1 trains only every that many steps and scores every step; training stops
    ``patience`` steps after the smallest score.

    The autoencoder, its shuffling generator (seeded with ``seed``) and the queue are the rule's
    own: it draws no random numbers from the run's streams, and all of it goes into checkpoints.
    """

    name = "self_validation"
    _tensor_attrs = ("_queue",)

    def __init__(
        self,
        window: int = 256,
        patience: int = 500,
        *,
        update_every: int = 1,
        lr: float = 1e-3,
        batch_size: int = 32,
        seed: int = 0,
        check_every: int = 10,
        history_every: int = 10,
    ) -> None:
        super().__init__(check_every=check_every, history_every=history_every)
        self.window = check_int("stopping.criterion.window", window, 2)
        self.patience = check_int("stopping.criterion.patience", patience, 1)
        self.update_every = check_int("stopping.criterion.update_every", update_every, 1)
        self.lr = float(check_positive("stopping.criterion.lr", lr))
        self.batch_size = check_int("stopping.criterion.batch_size", batch_size, 1)
        self.seed = check_int("stopping.criterion.seed", seed, 0)
        self._queue: Tensor | None = None  # (window, C, H, W) ring of the latest clipped outputs
        self._count = 0
        self._trainings = 0
        self._autoencoder: ValidationAutoencoder | None = None
        self._generator = torch.Generator().manual_seed(self.seed)

    def _describe(self) -> str:
        return (
            f"window={self.window}, patience={self.patience}, update_every={self.update_every}, "
            f"lr={self.lr}, batch_size={self.batch_size}, {super()._describe()}"
        )

    # ----------------------------------------------------------------------- set-up and state

    def prepare(self, problem: Any) -> None:
        """Refuse images too small for the autoencoder before training starts."""
        super().prepare(problem)
        height, width = problem.image_shape
        if min(height, width) < MIN_SIDE:
            raise ConfigError(
                "stopping",
                self.name,
                f"needs images of at least {MIN_SIDE} px on each side for its autoencoder; this one is "
                f"{height}x{width} (choose stopping=wmv or a larger data.size)",
            )

    def details(self) -> dict[str, Any]:
        ae = self._autoencoder
        if ae is None:
            return {}
        return {"autoencoder_stages": ae.stages, "autoencoder_trainings": self._trainings}

    def _build(self, shape: tuple[int, int, int], device: torch.device) -> None:
        """Create the autoencoder, seeded by ``seed`` without touching the run's random streams."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._autoencoder = ValidationAutoencoder(*shape)
        self._autoencoder.to(device)

    def _allocate(self, image: Tensor) -> None:
        super()._allocate(image)
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"SelfValidation expects images of shape (1, C, H, W), got {tuple(image.shape)}")
        self._queue = image.new_zeros((self.window, *image.shape[1:]))
        if self._autoencoder is None or self._autoencoder.image_shape != tuple(image.shape[1:]):
            self._build(tuple(image.shape[1:]), image.device)

    def _move_to(self, device: torch.device) -> None:
        super()._move_to(device)
        if self._autoencoder is not None:
            self._autoencoder.to(device)

    def _extra_state(self) -> dict[str, Any]:
        ae = self._autoencoder
        return {
            "count": self._count,
            "trainings": self._trainings,
            "autoencoder": None
            if ae is None
            else {k: v.detach().clone() for k, v in ae.state_dict().items()},
            "generator": self._generator.get_state(),
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        queue = state["_queue"]
        if queue is not None and queue.shape[0] != self.window:
            raise ValueError(
                f"the saved stopping state has a window of {queue.shape[0]} outputs but "
                f"stopping.criterion.window={self.window}; resume with the same window"
            )
        self._count = int(state["count"])
        self._trainings = int(state["trainings"])
        self._generator.set_state(state["generator"].cpu())
        if queue is not None and state["autoencoder"] is not None:
            self._build(tuple(queue.shape[1:]), queue.device)
            assert self._autoencoder is not None
            self._autoencoder.load_state_dict(state["autoencoder"])

    # ------------------------------------------------------------------------------- the rule

    def _observe(
        self, step: int, image: Tensor, misfit: Tensor | float | None, psnr: Tensor | float | None
    ) -> Tensor | None:
        queue, ae = self._queue, self._autoencoder
        assert queue is not None and ae is not None and self._best_score is not None
        newest = image[0].clamp(0.0, 1.0)
        queue[self._count % self.window].copy_(newest)
        self._count += 1
        full_for = self._count - self.window  # steps since the queue filled up
        if full_for < 0:
            return None
        score = self._reconstruction_error(ae, newest)
        self._keep_if(score < self._best_score, step, image, score)
        if full_for % self.update_every == 0:
            self._train_epoch(ae, queue)
        return score

    def _reconstruction_error(self, ae: ValidationAutoencoder, newest: Tensor) -> Tensor:
        """``||x - AE(x)||_2`` of one output, with BatchNorm on its running statistics."""
        ae.eval()
        with torch.no_grad():
            error = newest - ae(newest.unsqueeze(0))[0]
        return torch.linalg.vector_norm(error.to(accumulator_dtype(newest.device)))

    def _train_epoch(self, ae: ValidationAutoencoder, queue: Tensor) -> None:
        """One pass over the queue in shuffled mini-batches with a fresh Adam (the reference's)."""
        ae.train()
        optimizer = torch.optim.Adam(ae.parameters(), lr=self.lr)
        order = torch.randperm(self.window, generator=self._generator).to(queue.device)
        with torch.enable_grad():
            for batch in order.split(self.batch_size):
                images = queue[batch]
                optimizer.zero_grad(set_to_none=True)
                F.mse_loss(ae(images), images).backward()
                optimizer.step()
        self._trainings += 1
