"""The fixed network input of a Deep Image Prior and its per-step perturbation."""

from __future__ import annotations

import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_choice, check_positive

INPUT_KINDS = ("noise", "normal", "meshgrid", "pseudo_inverse")


def make_network_input(
    kind: str,
    channels: int,
    image_shape: tuple[int, int],
    scale: float,
    seed: int,
    pseudo_inverse: Tensor | None = None,
) -> Tensor:
    """Build the (1, channels, H, W) input z.

    ``noise`` draws uniform noise in [0, scale) as in the original DIP; ``normal`` draws Gaussian
    noise N(0, scale^2) (the Deep Random Projector's seed); ``meshgrid`` is the two-channel grid of
    x and y coordinates in [0, 1] (the DIP code's other input, DRP's on inpainting); and
    ``pseudo_inverse`` feeds the operator's classical reconstruction (FBP for CT, bicubic for
    super-resolution), repeated over the channels, which is what educated DIP and some CT variants
    use.
    """
    check_choice("method.input.kind", kind, INPUT_KINDS)
    check_positive("method.input.channels", channels)
    check_positive("method.input.scale", scale, allow_zero=kind not in ("noise", "normal"))
    if kind in ("noise", "normal"):
        generator = torch.Generator().manual_seed(seed)
        draw = torch.rand if kind == "noise" else torch.randn
        return draw(1, channels, *image_shape, generator=generator) * scale
    if kind == "meshgrid":
        if channels != 2:
            raise ConfigError("method.input.channels", channels, "a meshgrid input has 2 channels (x, y)")
        height, width = image_shape
        rows = torch.linspace(0.0, 1.0, height).view(height, 1).expand(height, width)
        cols = torch.linspace(0.0, 1.0, width).view(1, width).expand(height, width)
        return torch.stack([cols, rows]).unsqueeze(0).contiguous()
    if pseudo_inverse is None:
        raise ConfigError("method.input.kind", kind, "needs an operator with a pseudo-inverse")
    image = pseudo_inverse.mean(dim=1, keepdim=True)
    return image.repeat(1, channels, 1, 1)


def perturb(z: Tensor, std: float) -> Tensor:
    """Add fresh Gaussian noise to the input, the regulariser DIP uses at every step."""
    if std <= 0:
        return z
    return z + std * torch.randn_like(z)
