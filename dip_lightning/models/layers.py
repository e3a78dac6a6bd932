"""Building blocks shared by the networks: per-sample batch norm, conv factories' type, weight init.

DIP fits one image at a time (batch size 1), so a BatchNorm layer in training mode normalises each
image with its own spatial statistics. Monte Carlo uncertainty methods draw T samples of the network
output; running them as one batch of T copies is far faster than T separate passes, but plain
BatchNorm would then mix the samples' statistics. ``SampleBatchNorm2d`` plus ``per_sample_norm``
keep every sample normalised exactly as it was during training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dip_lightning.errors import ConfigError, check_int, check_positive

ConvFactory = Callable[[int, int, int, int, str, bool], nn.Module]
"""Builds a "same"-padded 2-D convolution from (in_ch, out_ch, kernel, stride, padding_mode, bias).

Networks take one so that the same architecture can be made of deterministic or Bayesian layers.
"""

PADDING_MODES: tuple[str, ...] = ("reflect", "zeros", "replicate")


def check_kernel(setting: str, kernel: int) -> int:
    """Return an odd positive kernel size: "same" padding needs it to keep sizes divisible by 2."""
    odd = " and odd"
    if check_int(setting, kernel, 1, extra=odd) % 2 == 0:
        raise ConfigError(setting, kernel, f"must be an integer >= 1{odd}")
    return int(kernel)


def grouped_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
) -> Tensor:
    """``F.conv2d`` with ``groups``; on a CPU the groups run one by one.

    Replicated networks hold one convolution per replicate as a grouped convolution. cuDNN runs
    those as one kernel, but oneDNN's grouped kernels took up to 30 % longer (forward and backward)
    than the same convolutions one after another at 64x64 with 64 channels per group.
    """
    if groups == 1 or x.device.type != "cpu":
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    biases = [None] * groups if bias is None else list(bias.chunk(groups))
    return torch.cat(
        [
            F.conv2d(part, w, b, stride, padding, dilation)
            for part, w, b in zip(x.chunk(groups, dim=1), weight.chunk(groups), biases)
        ],
        dim=1,
    )


class SampleBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that can normalise every sample of a batch with that sample's own statistics.

    With ``per_sample`` False it is a plain ``nn.BatchNorm2d``. With ``per_sample`` True each sample
    is normalised over its own (H, W) per channel, followed by the usual affine transform, and the
    running statistics are left untouched: for a network trained with batch size 1 this gives each
    item of a batch of Monte Carlo samples exactly the output it would get on its own.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.per_sample = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.per_sample:
            return super().forward(x)
        return F.instance_norm(
            x,
            running_mean=None,
            running_var=None,
            weight=self.weight,
            bias=self.bias,
            use_input_stats=True,
            momentum=0.0,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", per_sample={self.per_sample}"


@contextmanager
def per_sample_norm(module: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Switch every ``SampleBatchNorm2d`` in ``module`` to per-sample statistics for the block.

    The previous per-layer settings are restored on exit, also when the block raises.
    """
    layers = [m for m in module.modules() if isinstance(m, SampleBatchNorm2d)]
    previous = [m.per_sample for m in layers]
    for m in layers:
        m.per_sample = enabled
    try:
        yield module
    finally:
        for m, flag in zip(layers, previous):
            m.per_sample = flag


@torch.no_grad()
def init_normal_(module: nn.Module, std: float) -> nn.Module:
    """Draw every convolution weight of ``module`` from N(0, std²); biases are left as they are.

    The MC-dropout DIP initialises its network this way (std 0.1) instead of PyTorch's default.
    Bayesian mean-field layers get their weight *means* drawn this way.
    """
    check_positive("model.init_std", std)
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            m.weight.normal_(0.0, std)
        elif isinstance(getattr(m, "weight_mu", None), nn.Parameter):
            m.weight_mu.normal_(0.0, std)
    return module
