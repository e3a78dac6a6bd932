"""An inverse problem instance: operator, noisy observation, and (when known) the ground truth.

Example:
    >>> import torch
    >>> from dip_lightning.physics.identity import Identity
    >>> from dip_lightning.physics.noise import GaussianNoise
    >>> problem = make_observation(torch.rand(1, 32, 32), Identity(), GaussianNoise(0.1), seed=0)
    >>> problem.observation.shape, problem.image_shape, problem.channels, problem.noise_std
    (torch.Size([1, 1, 32, 32]), (32, 32), 1, 0.1)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from dip_lightning.physics.base import ForwardOperator
from dip_lightning.physics.noise import NoiseModel

__all__ = ["InverseProblem", "make_observation"]


@dataclass
class InverseProblem:
    """One measured image and everything needed to reconstruct it.

    Attributes:
        operator: the forward operator A.
        observation: the noisy measurement y, shape (1, C, ...) (the operator's measurement shape);
            complex for operators with complex measurements (k-space).
        ground_truth: the clean image x, shape (1, C, H, W), or None for real measurements.
        noise: the noise model that made (or is assumed to have made) y.
        name: a label for logs and file names.
        image_shape: (H, W) of the image to reconstruct.
        channels: C.
        intensity_transform: the raw -> [0, 1] map of the image's intensities as
            ``{"offset": o, "scale": s}`` (raw = unit * s + o), saved with the results so that
            reconstructions can be read in the original units (e.g. Hounsfield units); None if unknown.
        train_mask: None, or 1 where a measurement element is used for training and 0 where it is
            held out to score the fit (``validation_fraction``, see :mod:`dip_lightning.physics.holdout`).
    """

    operator: ForwardOperator
    observation: Tensor
    ground_truth: Tensor | None
    noise: NoiseModel
    name: str
    image_shape: tuple[int, int]
    channels: int
    intensity_transform: dict[str, float] | None = None
    train_mask: Tensor | None = None

    @property
    def noise_std(self) -> float | None:
        """The rms noise level in measurement units, ``noise.expected_std(A x)`` (discrepancy principle).

        None without a ground truth: the level of a real measurement's noise is not known here,
        and callers then fall back to a setting or an estimate from the observation.
        """
        if self.ground_truth is None:
            return None
        with torch.no_grad():
            return self.noise.expected_std(
                self.operator.simulate(self.ground_truth.to(self.observation.device))
            )

    @property
    def measurement_shape(self) -> tuple[int, ...]:
        """Shape (C, ...) of the observation without its batch axis."""
        return tuple(self.observation.shape[1:])

    def to(self, device: torch.device | str) -> InverseProblem:
        """A copy with the tensors on ``device``; the operator (a module) is moved in place."""
        return dataclasses.replace(
            self,
            operator=self.operator.to(device),
            observation=self.observation.to(device),
            ground_truth=None if self.ground_truth is None else self.ground_truth.to(device),
            train_mask=None if self.train_mask is None else self.train_mask.to(device),
        )

    def aligned(self, image: Tensor) -> Tensor:
        """``image`` moved onto the ground truth by the operator's ``alignment`` (the identity for
        most operators; a shift and a flip for phase retrieval), for scoring; as is without a truth."""
        truth = self.ground_truth
        if truth is None:
            return image
        return self.operator.align(image.to(truth), truth)

    def training_mean(self, values: Tensor, where: Tensor | None = None) -> Tensor:
        """Mean of per-element loss values over the elements used for training.

        Those are all elements, less the held-out ones (``train_mask``) and, when ``where`` is
        given, less the elements where it is False (e.g. pixels the operator does not observe).
        """
        masks = [m for m in (self.train_mask, where) if m is not None]
        if not masks:
            return values.mean()
        mask = torch.ones_like(values)
        for m in masks:
            mask = mask * m.to(values.dtype).expand_as(values)
        return (values * mask).sum() / mask.sum().clamp_min(1)


def make_observation(
    image: Tensor,
    operator: ForwardOperator,
    noise: NoiseModel,
    seed: int,
    name: str = "image",
    intensity_transform: dict[str, float] | None = None,
) -> InverseProblem:
    """Simulate y = noise(A x) for a clean image x; the same seed always gives the same y.

    A x is ``operator.simulate(x)``: the true physics, which differs from ``operator(x)`` only for
    operators with parameters fitted with the image (a blind blur's kernel estimate).

    The image is checked with ``operator.check_image_shape`` first, so a size the operator cannot
    handle fails with a ConfigError before any work. The image is moved to the operator's device (if
    the operator holds tensors). The noise is drawn with a CPU generator seeded with ``seed`` and
    moved to that device, so CPU and GPU runs see the same observation.

    Args:
        image: the clean image, (C, H, W) or (1, C, H, W), floating point.
        operator: the forward operator A.
        noise: the noise model.
        seed: the noise seed.
        name: a label for the problem.
        intensity_transform: the raw -> [0, 1] intensity map of the image, kept with the problem.
    """
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"the image must have shape (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"the image must be a floating-point tensor scaled to [0, 1], got {image.dtype}")
    image_shape = (int(image.shape[-2]), int(image.shape[-1]))
    operator.check_image_shape(image_shape)
    tensors = [*operator.buffers(), *operator.parameters()]
    # Operators without tensors (the identity, matrix-free ones) act wherever the image is.
    image = image.detach().to(tensors[0].device if tensors else image.device)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        observation = noise(operator.simulate(image), generator)
    return InverseProblem(
        operator=operator,
        observation=observation,
        ground_truth=image,
        noise=noise,
        name=name,
        image_shape=image_shape,
        channels=int(image.shape[1]),
        intensity_transform=intensity_transform,
    )
