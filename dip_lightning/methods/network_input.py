"""The fixed network input of a Deep Image Prior and its per-step perturbation."""

from __future__ import annotations

import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_choice, check_positive

INPUT_KINDS = ("noise", "pseudo_inverse")


def make_network_input(
    kind: str,
    channels: int,
    image_shape: tuple[int, int],
    scale: float,
    seed: int,
    pseudo_inverse: Tensor | None = None,
) -> Tensor:
    """Build the (1, channels, H, W) input z.

    ``noise`` draws uniform noise in [0, scale) as in the original DIP; ``pseudo_inverse`` feeds the
    operator's classical reconstruction (FBP for CT, bicubic for super-resolution), repeated over
    the channels, which is what educated DIP and some CT variants use.
    """
    check_choice("method.input.kind", kind, INPUT_KINDS)
    check_positive("method.input.channels", channels)
    check_positive("method.input.scale", scale, allow_zero=kind != "noise")
    if kind == "noise":
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(1, channels, *image_shape, generator=generator) * scale
    if pseudo_inverse is None:
        raise ConfigError("method.input.kind", kind, "needs an operator with a pseudo-inverse")
    image = pseudo_inverse.mean(dim=1, keepdim=True)
    return image.repeat(1, channels, 1, 1)


def perturb(z: Tensor, std: float) -> Tensor:
    """Add fresh Gaussian noise to the input, the regulariser DIP uses at every step."""
    if std <= 0:
        return z
    return z + std * torch.randn_like(z)
