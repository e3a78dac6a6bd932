"""ConvDecoder (Darestani and Heckel, "Accelerated MRI with un-trained neural networks", 2021).

An un-trained decoder: a small fixed noise tensor is grown to the image size through ``layers - 1``
blocks of (upsample, 3x3 conv, ReLU, BatchNorm), then one more (3x3 conv, ReLU, BatchNorm) block
at full size and a 1x1 conv to the output channels. The feature sizes grow geometrically from
``in_size`` to the image size (each side by the factor (out / in)^(1 / (layers - 1)), rounded
up), as in the reference code (MLI-lab/ConvDecoder: ``convdecoder`` with ``need_last=True``,
``skips=False``, ``bias=False``, nearest upsampling), whose MRI runs use 160 channels, 8 layers and
an 8 x 4 input.

How it fits the platform: the method hands every network a full-size input (1, C, H, W) of
uniform noise (``method.input``); the decoder takes its small input from it by nearest-neighbour
subsampling to ``in_size``, which keeps the input i.i.d. uniform, as the reference's own input is,
and lets the method's input perturbation act as it does for any network. The output size is the
input's (H, W), so one network serves any image size of at least ``in_size``.

Methods change it through the same keyword arguments as the skip network: ``conv`` (MFVI's
mean-field layers), ``dropout_*`` (MC dropout: Dropout2d after every 3x3 conv) and
``log_precision_channel`` (one more unbounded output channel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dip_lightning.errors import ConfigError, check_choice, check_in_range, check_int
from dip_lightning.models.bayesian import deterministic_conv_factory
from dip_lightning.models.layers import ConvFactory, SampleBatchNorm2d, check_kernel

__all__ = ["ConvDecoder", "hidden_sizes"]

UPSAMPLE_MODES: tuple[str, ...] = ("nearest", "bilinear")
DROPOUT_ORDERS: tuple[str, ...] = ("before_norm", "after_activation")
DROPOUT_PLACEMENTS: tuple[str, ...] = ("after_conv", "decoder_only")


def hidden_sizes(in_size: tuple[int, int], out_size: tuple[int, int], layers: int) -> list[tuple[int, int]]:
    """The feature-map sizes after each of the ``layers - 1`` upsampling steps; the last is out_size."""
    steps = layers - 1
    scale = [(out_size[i] / in_size[i]) ** (1.0 / steps) for i in range(2)]
    sizes = [tuple(math.ceil(scale[i] ** n * in_size[i]) for i in range(2)) for n in range(1, steps)]
    return [*sizes, (int(out_size[0]), int(out_size[1]))]  # type: ignore[list-item]


class ConvDecoder(nn.Module):
    """Noise (in_size) -> [upsample, conv, ReLU, BN] x (layers - 1) -> conv, ReLU, BN -> 1x1 conv."""

    size_multiple = 1

    def __init__(
        self,
        in_channels: int = 32,
        out_channels: int = 1,
        channels: int = 160,
        layers: int = 8,
        in_size: Sequence[int] = (8, 8),
        kernel_size: int = 3,
        upsample_mode: str = "nearest",
        padding: str = "zeros",
        need_sigmoid: bool = False,
        log_precision_channel: bool = False,
        conv: ConvFactory | None = None,
        dropout_p: float = 0.0,
        dropout_placement: str = "after_conv",
        dropout_order: str = "before_norm",
    ) -> None:
        super().__init__()
        self.in_channels = check_int("model.in_channels", in_channels, 1)
        self.out_channels = check_int("model.out_channels", out_channels, 1)
        self.channels = check_int("model.channels", channels, 1)
        self.layers = check_int("model.layers", layers, 2)
        if isinstance(in_size, int) or len(in_size) != 2:
            raise ConfigError("model.in_size", in_size, "must be a list [height, width] of two integers >= 1")
        self.in_size = (check_int("model.in_size", in_size[0], 1), check_int("model.in_size", in_size[1], 1))
        kernel = check_kernel("model.kernel_size", kernel_size)
        self.upsample_mode = str(check_choice("model.upsample_mode", upsample_mode, UPSAMPLE_MODES))
        check_in_range("model.dropout_p", dropout_p, 0.0, 1.0)
        check_choice("model.dropout_placement", dropout_placement, DROPOUT_PLACEMENTS)
        check_choice("method.dropout_order", dropout_order, DROPOUT_ORDERS)
        self.need_sigmoid = bool(need_sigmoid)
        self.log_precision_channel = bool(log_precision_channel)
        make_conv = conv if conv is not None else deterministic_conv_factory()

        def block(in_ch: int) -> nn.Sequential:
            dropout = [nn.Dropout2d(float(dropout_p))] if dropout_p > 0 else []
            early = dropout if dropout_order == "before_norm" else []
            late = dropout if dropout_order == "after_activation" else []
            # The reference orders a block conv -> ReLU -> BN; dropout sits right after the conv
            # (before_norm, as in the skip network) or at the end of the block.
            return nn.Sequential(
                make_conv(in_ch, self.channels, kernel, 1, padding, False),
                *early,
                nn.ReLU(),
                SampleBatchNorm2d(self.channels),
                *late,
            )

        self.blocks = nn.ModuleList(
            [block(self.in_channels if i == 0 else self.channels) for i in range(self.layers - 1)]
        )
        self.last = block(self.channels)
        total_out = self.out_channels + int(self.log_precision_channel)
        self.head = make_conv(self.channels, total_out, 1, 1, padding, False)

    @property
    def min_size(self) -> int:
        """The image must be at least as large as the network's input on both sides."""
        return max(self.in_size)

    @property
    def total_out_channels(self) -> int:
        return self.out_channels + int(self.log_precision_channel)

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        align = None if self.upsample_mode == "nearest" else False
        return F.interpolate(x, size=size, mode=self.upsample_mode, align_corners=align)

    def forward(self, z: Tensor) -> Tensor:
        out_size = (int(z.shape[-2]), int(z.shape[-1]))
        if out_size[0] < self.in_size[0] or out_size[1] < self.in_size[1]:
            raise ConfigError(
                "model.in_size",
                list(self.in_size),
                f"must not exceed the image size {out_size}; lower model.in_size",
            )
        x = F.interpolate(z, size=self.in_size, mode="nearest")  # subsample the i.i.d. input noise
        for size, block in zip(hidden_sizes(self.in_size, out_size, self.layers), self.blocks):
            x = block(self._resize(x, size))
        out = self.head(self.last(x))
        if not self.need_sigmoid:
            return out
        image = out[:, : self.out_channels].sigmoid()
        if self.log_precision_channel:
            return torch.cat([image, out[:, self.out_channels :]], dim=1)
        return image
