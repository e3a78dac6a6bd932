"""The DIP "skip" network: a U-Net-like encoder-decoder with thin skip branches at every scale.

The architecture follows Ulyanov et al.'s Deep Image Prior: at every scale an encoder block halves
the resolution, the coarser scales process the result, the decoder upsamples it back, optionally
concatenates a few skip channels computed from the scale's input, and refines. All convolutions come
from a conv factory, so the same network serves the deterministic DIP, the MC-dropout DIP and the
mean-field Bayesian DIP (MFVI).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dip_lightning.errors import ConfigError, check_choice, check_in_range, check_int
from dip_lightning.models.bayesian import deterministic_conv_factory
from dip_lightning.models.layers import (
    PADDING_MODES,
    ConvFactory,
    SampleBatchNorm2d,
    check_kernel,
)

ACTIVATIONS: tuple[str, ...] = ("leaky_relu", "relu", "elu", "silu")
NORMS: tuple[str, ...] = ("batch", "instance", "none")
UPSAMPLE_MODES: tuple[str, ...] = ("bilinear", "nearest", "bicubic")
DOWNSAMPLE_MODES: tuple[str, ...] = ("stride", "avg", "max")
DROPOUT_PLACEMENTS: tuple[str, ...] = ("after_conv", "decoder_only")
DROPOUT_ORDERS: tuple[str, ...] = ("before_norm", "after_activation")
"""Where dropout sits in a conv block: ``before_norm`` (conv -> Dropout2d -> norm -> activation,
as in Laves et al.'s and Toelle et al.'s code) or ``after_activation`` (conv -> norm ->
activation -> Dropout2d)."""

ChannelSpec = int | Sequence[int]


def _activation(name: str) -> nn.Module:
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if name == "relu":
        return nn.ReLU()
    if name == "elu":
        return nn.ELU()
    return nn.SiLU()


def _norm(name: str, channels: int) -> nn.Module:
    if name == "batch":
        return SampleBatchNorm2d(channels)
    if name == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def _upsample(mode: str) -> nn.Upsample:
    align = None if mode == "nearest" else False
    return nn.Upsample(scale_factor=2, mode=mode, align_corners=align)


def _channel_lists(
    down: ChannelSpec, up: ChannelSpec, skip: ChannelSpec
) -> tuple[list[int], list[int], list[int]]:
    """Expand scalar channel counts to per-scale lists; the lists given must agree in length."""
    specs = {"model.channels_down": down, "model.channels_up": up, "model.channels_skip": skip}
    lists: dict[str, list[int] | None] = {}
    for setting, value in specs.items():
        if isinstance(value, int) and not isinstance(value, bool):
            lists[setting] = None
        elif isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            raise ConfigError(setting, value, "must be an integer or a list of integers, one per scale")
        else:
            lists[setting] = list(value)
    lengths = {setting: len(v) for setting, v in lists.items() if v is not None}
    if not lengths:
        raise ConfigError("model.channels_down", down, "give a list (one count per scale) to set the scales")
    scales = lengths.get("model.channels_down", next(iter(lengths.values())))
    if scales < 1:
        raise ConfigError("model.channels_down", down, "needs at least one scale")
    for setting, n in lengths.items():
        if n != scales:
            raise ConfigError(setting, specs[setting], f"must have {scales} entries, one per scale")
    out = []
    for setting, values in lists.items():
        values = values if values is not None else [specs[setting]] * scales
        allow_zero = setting == "model.channels_skip"
        out.append([check_int(setting, _as_int(v), 0 if allow_zero else 1) for v in values])
    return out[0], out[1], out[2]


def _as_int(value: object) -> object:
    """Accept integral numbers of other types (numpy ints, 4.0) but leave anything else to fail."""
    if isinstance(value, int):  # bool included: check_int rejects it later
        return value
    try:
        as_int = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return value
    return as_int if as_int == value else value


class _Scale(nn.Module):
    """One scale of the network: encoder block, the coarser scales, upsampling, skip and decoder."""

    def __init__(
        self, skip: nn.Module | None, down: nn.Module, inner: nn.Module | None, up: nn.Module, upsample: str
    ) -> None:
        super().__init__()
        self.skip = skip
        self.down = down
        self.inner = inner
        self.upsample = _upsample(upsample)
        self.up = up

    def forward(self, x: Tensor) -> Tensor:
        y = self.down(x)
        if self.inner is not None:
            y = self.inner(y)
        y = self.upsample(y)
        if self.skip is not None:
            y = torch.cat([self.skip(x), y], dim=1)
        return self.up(y)


class SkipNet(nn.Module):
    """DIP encoder-decoder ("skip") network mapping a fixed noise input to an image.

    Output: ``out_channels`` image channels (through a sigmoid when ``need_sigmoid``) and, when
    ``log_precision_channel`` is set, one more unbounded channel holding the log-precision s of a
    heteroscedastic Gaussian likelihood. Input sizes must be multiples of ``size_multiple`` and at
    least ``min_size``.
    """

    def __init__(
        self,
        in_channels: int = 32,
        out_channels: int = 1,
        channels_down: ChannelSpec = (128,) * 5,
        channels_up: ChannelSpec = (128,) * 5,
        channels_skip: ChannelSpec = (4,) * 5,
        kernel_down: int = 3,
        kernel_up: int = 3,
        kernel_skip: int = 1,
        upsample_mode: str = "bilinear",
        downsample: str = "stride",
        norm: str = "batch",
        activation: str = "leaky_relu",
        padding: str = "reflect",
        need_sigmoid: bool = True,
        log_precision_channel: bool = False,
        conv: ConvFactory | None = None,
        dropout_p: float = 0.0,
        dropout_placement: str = "after_conv",
        dropout_order: str = "before_norm",
    ) -> None:
        super().__init__()
        self.in_channels = check_int("model.in_channels", in_channels, 1)
        self.out_channels = check_int("model.out_channels", out_channels, 1)
        down, up, skip = _channel_lists(channels_down, channels_up, channels_skip)
        self.kernel_down = check_kernel("model.kernel_down", kernel_down)
        self.kernel_up = check_kernel("model.kernel_up", kernel_up)
        self.kernel_skip = check_kernel("model.kernel_skip", kernel_skip)
        check_choice("model.upsample_mode", upsample_mode, UPSAMPLE_MODES)
        check_choice("model.downsample", downsample, DOWNSAMPLE_MODES)
        check_choice("model.norm", norm, NORMS)
        check_choice("model.activation", activation, ACTIVATIONS)
        check_choice("model.padding", padding, PADDING_MODES)
        check_in_range("model.dropout_p", dropout_p, 0.0, 1.0)
        check_choice("model.dropout_placement", dropout_placement, DROPOUT_PLACEMENTS)
        check_choice("method.dropout_order", dropout_order, DROPOUT_ORDERS)

        self.channels_down, self.channels_up, self.channels_skip = down, up, skip
        self.scales = len(down)
        self.norm = norm
        self.padding = padding
        self.need_sigmoid = bool(need_sigmoid)
        self.log_precision_channel = bool(log_precision_channel)
        self._conv = conv if conv is not None else deterministic_conv_factory()
        self._activation = activation
        self._downsample = downsample
        self._dropout_p = float(dropout_p)
        self._dropout_placement = dropout_placement
        self._dropout_order = dropout_order

        self.body = self._build_scale(0, self.in_channels, upsample_mode)
        total_out = self.out_channels + int(self.log_precision_channel)
        self.head = self._conv(up[0], total_out, 1, 1, padding, True)
        del self._conv  # factories may be closures; keep the module picklable

    # ----------------------------------------------------------------------------------- building
    def _block(self, in_ch: int, out_ch: int, kernel: int, stride: int, dropout: bool) -> list[nn.Module]:
        """conv → norm → activation, the unit every part of the network is made of, with channel
        dropout right after the conv (``before_norm``) or at the end (``after_activation``)."""
        dropout_layer = [nn.Dropout2d(self._dropout_p)] if dropout and self._dropout_p > 0 else []
        early = dropout_layer if self._dropout_order == "before_norm" else []
        late = dropout_layer if self._dropout_order == "after_activation" else []
        layers: list[nn.Module] = []
        if stride > 1 and self._downsample != "stride":
            layers.append(self._conv(in_ch, out_ch, kernel, 1, self.padding, True))
            pool = nn.AvgPool2d if self._downsample == "avg" else nn.MaxPool2d
            layers += [*early, pool(stride)]
        else:
            layers += [self._conv(in_ch, out_ch, kernel, stride, self.padding, True), *early]
        layers += [_norm(self.norm, out_ch), _activation(self._activation), *late]
        return layers

    def _build_scale(self, i: int, in_ch: int, upsample_mode: str) -> _Scale:
        down_ch, up_ch, skip_ch = self.channels_down[i], self.channels_up[i], self.channels_skip[i]
        encoder_dropout = self._dropout_placement == "after_conv"
        down = nn.Sequential(
            *self._block(in_ch, down_ch, self.kernel_down, 2, encoder_dropout),
            *self._block(down_ch, down_ch, self.kernel_down, 1, encoder_dropout),
        )
        last = i == self.scales - 1
        inner = None if last else self._build_scale(i + 1, down_ch, upsample_mode)
        deep_ch = down_ch if last else self.channels_up[i + 1]
        skip = None
        if skip_ch > 0:
            skip = nn.Sequential(*self._block(in_ch, skip_ch, self.kernel_skip, 1, dropout=False))
        up = nn.Sequential(
            _norm(self.norm, skip_ch + deep_ch),
            *self._block(skip_ch + deep_ch, up_ch, self.kernel_up, 1, dropout=True),
            *self._block(up_ch, up_ch, 1, 1, dropout=True),
        )
        return _Scale(skip, down, inner, up, upsample_mode)

    # ------------------------------------------------------------------------------------ shapes
    @property
    def size_multiple(self) -> int:
        """Image height and width must be divisible by this (one halving per scale)."""
        return 2**self.scales

    @property
    def min_size(self) -> int:
        """Smallest usable image side.

        The coarsest feature map (side / size_multiple) must be wider than the reflection padding
        of the convs applied to it, and hold more than one pixel when normalised.
        """
        coarsest = 2 if self.norm != "none" else 1
        if self.padding == "reflect":
            coarsest = max(coarsest, self.kernel_down // 2 + 1)
            # the decoder conv and the skip branch of the coarsest scale work at twice that size
            coarsest = max(coarsest, (max(self.kernel_up, self.kernel_skip) // 2 + 2) // 2)
        return coarsest * self.size_multiple

    @property
    def total_out_channels(self) -> int:
        """Image channels plus the log-precision channel, if any."""
        return self.out_channels + int(self.log_precision_channel)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ConfigError if an image of this size cannot pass through the network."""
        mult, smallest = self.size_multiple, self.min_size
        if height % mult or width % mult or height < smallest or width < smallest:
            raise ConfigError(
                "model.channels_down",
                self.scales,
                f"{self.scales} scales need image sides divisible by {mult} and at least {smallest}, "
                f"got {height}x{width}; use fewer scales or pad the image",
            )

    # ----------------------------------------------------------------------------------- forward
    def forward(self, z: Tensor) -> Tensor:
        self.check_input_size(z.shape[-2], z.shape[-1])
        y = self.head(self.body(z))
        if not self.need_sigmoid:
            return y
        if not self.log_precision_channel:
            return torch.sigmoid(y)
        return torch.cat([torch.sigmoid(y[:, : self.out_channels]), y[:, self.out_channels :]], dim=1)

    def split_output(self, y: Tensor) -> tuple[Tensor, Tensor | None]:
        """Split a network output into the image and the log-precision channel (None without one)."""
        if not self.log_precision_channel:
            return y, None
        return y[:, : self.out_channels], y[:, self.out_channels :]
