"""The layer list of our DIP skip network (``dip_lightning.models.skip.SkipNet``) for the GP kernel.

The list follows SkipNet's construction scale by scale: encoder (conv with stride 2, or conv and
average pooling, then norm and activation; a second conv block), the coarser scales, upsampling,
concatenation with the skip branch (conv, norm, activation), norm, the decoder's two conv blocks,
and the 1x1 head with its sigmoid. Weight and bias variances are those of PyTorch's default init
(uniform with bound 1/sqrt(fan_in): variance 1/(3 fan_in) for both); the biases' variance keeps
its finite-width value 1/(3 fan_in), which matters only where no norm follows (the head).

Approximations of the limit, beyond those of :mod:`dip_lightning.gp.kernel`: channel counts enter
only as the proportions of skip and deep channels at each concatenation; LeakyReLU(0.2) uses its
exact closed form, ELU and SiLU quadrature; ``downsample='max'`` has no closed form and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from dip_lightning.errors import ConfigError, check_choice, check_int
from dip_lightning.gp.kernel import Activation, Concat, Conv, Downsample, Layer, Norm, Upsample

__all__ = ["SKIPNET_SETTINGS", "skipnet_layers"]

_ACTIVATIONS = {
    "leaky_relu": Activation("leaky_relu", 0.2),
    "relu": Activation("relu"),
    "elu": Activation("elu"),
    "silu": Activation("silu"),
}
_IGNORED = (
    "_target_",
    "_partial_",
    "out_channels",
    "padding",
    "log_precision_channel",
    "conv",
    "dropout_p",
    "dropout_placement",
    "dropout_order",
    "channels_last",
    "compile",
)
SKIPNET_SETTINGS: tuple[str, ...] = (
    "channels_down",
    "channels_up",
    "channels_skip",
    "kernel_down",
    "kernel_up",
    "kernel_skip",
    "upsample_mode",
    "downsample",
    "norm",
    "activation",
    "need_sigmoid",
    "in_channels",
    *_IGNORED,
)
"""Keys of a ``model`` config the builder accepts; those in ``_IGNORED`` do not change the limit
(padding is not modelled, dropout is off at the prior, the channel count only scales)."""


def _per_scale(setting: str, value: int | Sequence[int], scales: int | None, minimum: int) -> list[int]:
    if isinstance(value, str | bytes) or not (isinstance(value, int) or hasattr(value, "__iter__")):
        raise ConfigError(setting, value, "must be an integer or a list of integers, one per scale")
    values = [value] * (scales or 1) if isinstance(value, int) else list(value)
    if scales is not None and len(values) != scales:
        raise ConfigError(setting, value, f"must have {scales} entries, one per scale")
    if not values:
        raise ConfigError(setting, value, "needs at least one scale")
    return [check_int(setting, v, minimum) for v in values]


def _kernel(setting: str, value: int) -> int:
    if check_int(setting, value, 1) % 2 == 0:
        raise ConfigError(setting, value, "must be a positive odd integer")
    return value


def skipnet_layers(
    channels_down: int | Sequence[int] = (128,) * 5,
    channels_up: int | Sequence[int] = (128,) * 5,
    channels_skip: int | Sequence[int] = (4,) * 5,
    kernel_down: int = 3,
    kernel_up: int = 3,
    kernel_skip: int = 1,
    upsample_mode: str = "bilinear",
    downsample: str = "stride",
    norm: str = "batch",
    activation: str = "leaky_relu",
    need_sigmoid: bool = True,
    in_channels: int = 32,
    **ignored: object,
) -> list[Layer]:
    """Layers of a SkipNet with these settings (SkipNet's own defaults and setting names)."""
    for key in ignored:
        if key not in _IGNORED:
            raise ConfigError(f"model.{key}", ignored[key], "is not a SkipNet setting")
    scales = None
    if not isinstance(channels_down, int):
        scales = len(_per_scale("model.channels_down", channels_down, None, 1))
    down = _per_scale("model.channels_down", channels_down, scales, 1)
    scales = len(down)
    up = _per_scale("model.channels_up", channels_up, scales, 1)
    skip = _per_scale("model.channels_skip", channels_skip, scales, 0)
    kd, ku = _kernel("model.kernel_down", kernel_down), _kernel("model.kernel_up", kernel_up)
    ks = _kernel("model.kernel_skip", kernel_skip)
    check_choice("model.upsample_mode", upsample_mode, ("nearest", "bilinear", "bicubic"))
    check_choice("model.downsample", downsample, ("stride", "avg"))
    check_choice("model.norm", norm, ("batch", "instance", "none"))
    check_choice("model.activation", activation, tuple(_ACTIVATIONS))
    act = _ACTIVATIONS[activation]
    normed = [Norm()] if norm != "none" else []

    def conv(in_ch: int, kernel: int, stride: int = 1) -> Conv:
        return Conv(kernel, stride, 1.0 / 3.0, 1.0 / (3.0 * in_ch * kernel * kernel))

    def block(in_ch: int, kernel: int, stride: int = 1) -> list[Layer]:
        if stride == 2 and downsample == "avg":
            return [conv(in_ch, kernel), Downsample("avg"), *normed, act]
        return [conv(in_ch, kernel, stride), *normed, act]

    def scale(i: int, in_ch: int) -> list[Layer]:
        deep = block(in_ch, kd, 2) + block(down[i], kd)
        last = i == scales - 1
        if not last:
            deep += scale(i + 1, down[i])
        deep.append(Upsample(upsample_mode))
        deep_ch = down[i] if last else up[i + 1]
        merged: list[Layer] = deep
        if skip[i] > 0:
            merged = [Concat((tuple(block(in_ch, ks)), tuple(deep)), (skip[i], deep_ch))]
        return [*merged, *normed, *block(skip[i] + deep_ch, ku), *block(up[i], 1)]

    head: list[Layer] = [Conv(1, 1, 1.0 / 3.0, 1.0 / (3.0 * up[0]))]
    return (
        scale(0, check_int("model.in_channels", in_channels, 1))
        + head
        + ([Activation("sigmoid")] if need_sigmoid else [])
    )
