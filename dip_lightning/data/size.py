"""Spatial size: parsing ``data.size``, centre crops, resizing, and fitting an image to a network.

An encoder-decoder network needs sides that are multiples of 2**scales so that its skip
connections line up; :func:`fit_size` crops or pads to that (``size_policy``) and says so.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from dip_lightning.errors import ConfigError, check_choice, check_int

MIN_SIDE = 8
SIZE_POLICIES = ("crop", "pad", "error")


def parse_size(
    size: int | list[int] | tuple[int, ...] | None, setting: str = "data.size", minimum: int = MIN_SIDE
) -> tuple[int, int] | None:
    """An int means a square; two ints mean (height, width). Each side must be at least ``minimum``."""
    if size is None:
        return None
    allowed = f"must be an integer or [height, width], each at least {minimum}"
    try:
        values = [size] if isinstance(size, int | np.integer) else list(size)
        if len(values) not in (1, 2):
            raise ConfigError(setting, size, allowed)
        sides = [check_int(setting, value, minimum) for value in values]
    except (TypeError, ConfigError):
        raise ConfigError(setting, size, allowed) from None
    return (sides[0], sides[-1])


def centre_crop(image: torch.Tensor, size: int | tuple[int, int] | list[int]) -> torch.Tensor:
    """Central crop of the last two axes; the centre holds the anatomy in most medical images."""
    height, width = parse_size(size, minimum=1)  # type: ignore[misc]
    in_h, in_w = image.shape[-2:]
    if height > in_h or width > in_w:
        raise ConfigError(
            "data.size", size, f"cannot crop a {in_h}x{in_w} image to {height}x{width}; use data.resize=true"
        )
    top = (in_h - height) // 2
    left = (in_w - width) // 2
    return image[..., top : top + height, left : left + width]


def resize(image: torch.Tensor, size: int | tuple[int, int] | list[int]) -> torch.Tensor:
    """Antialiased bilinear resize of (C, H, W) or (N, C, H, W); antialiasing avoids aliasing on shrink."""
    target = parse_size(size)
    batched = image.dim() == 4
    x = image if batched else image.unsqueeze(0)
    dtype = x.dtype
    out = F.interpolate(x.float(), size=target, mode="bilinear", align_corners=False, antialias=True)
    out = out.to(dtype)
    return out if batched else out.squeeze(0)


def fit_size(
    image: torch.Tensor,
    multiple: int,
    min_size: int,
    policy: str = "crop",
    *,
    setting: str = "data.path",
    value: object | None = None,
    scales: int | None = None,
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Make H and W multiples of ``multiple`` (2**scales for a U-Net) so skip connections line up.

    Returns the image and the padding (left, right, top, bottom) that was added, all zero unless
    ``policy="pad"``; :func:`unpad` removes it from a result of the same size.
    """
    check_choice("size_policy", policy, SIZE_POLICIES)
    check_int("multiple", multiple, 1)
    height, width = (int(s) for s in image.shape[-2:])
    if scales is None and multiple & (multiple - 1) == 0:
        scales = multiple.bit_length() - 1
    needed = max(min_size, 1)
    if policy == "crop":  # cropping rounds down, so the rounded-down size must still be enough
        needed = max(multiple, -(-needed // multiple) * multiple)
    if min(height, width) < needed:
        detail = f" (model has {scales} scales)" if scales is not None else ""
        raise ConfigError(
            setting,
            value if value is not None else f"{height}x{width} image",
            f"image is {height}x{width} but the network needs at least {needed} pixels per side{detail}",
        )
    if height % multiple == 0 and width % multiple == 0:
        return image, (0, 0, 0, 0)
    if policy == "error":
        raise ConfigError(
            "size_policy",
            policy,
            f"image is {height}x{width} but both sides must be multiples of {multiple}; "
            "use size_policy=crop or pad, or set data.size",
        )
    if policy == "crop":
        new_size = (height // multiple * multiple, width // multiple * multiple)
        warnings.warn(
            f"Centre-cropped the image from {height}x{width} to {new_size[0]}x{new_size[1]} "
            f"so that both sides are multiples of {multiple}",
            stacklevel=2,
        )
        return centre_crop(image, new_size), (0, 0, 0, 0)
    return _pad_to_multiple(image, multiple)


def _pad_to_multiple(image: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Reflect-pad symmetrically; reflection avoids the hard edges that zero padding would add."""
    height, width = image.shape[-2:]
    extra_h = -height % multiple
    extra_w = -width % multiple
    padding = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
    mode = "reflect" if max(padding[:2]) < width and max(padding[2:]) < height else "replicate"
    x = image.unsqueeze(0) if image.dim() == 3 else image
    padded = F.pad(x, padding, mode=mode)
    padded = padded.squeeze(0) if image.dim() == 3 else padded
    warnings.warn(
        f"Padded the image ({mode}) from {height}x{width} to {height + extra_h}x{width + extra_w} "
        f"so that both sides are multiples of {multiple}; results are cropped back",
        stacklevel=3,
    )
    return padded, padding


def unpad(image: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
    """Remove the padding (left, right, top, bottom) returned by :func:`fit_size`."""
    left, right, top, bottom = padding
    height, width = image.shape[-2:]
    return image[..., top : height - bottom, left : width - right]
