"""The stationary covariance of an infinitely wide random convolutional network on white-noise input.

Cheng et al. (CVPR 2019) show that a convolutional network with i.i.d. Gaussian weights and a
stationary random input tends to a stationary Gaussian process as every layer gets wider. Every
channel of every layer is then an independent copy of one random field, and its second moment
M(d) = E[a(x) a(x + d)] (d = offset on the grid) follows from the layer before:

* **convolution** with weights N(0, weight_var / fan_in) (fan_in = channels x kernel², as PyTorch's
  init scales them) and biases N(0, bias_var): M -> weight_var * M + bias_var. The weights of
  different taps are independent, so E[w_u w_u'] vanishes for u != u' and every tap sees the same
  M(d): the kernel size does not enter. (A filter whose taps were *equal* would convolve M with the
  autocorrelation of its support; that holds for the fixed filters below, not for random weights.
  tests/test_gp.py checks the rule against wide random networks.) The output is a zero-mean
  Gaussian field.
* **non-linearity** on a zero-mean Gaussian field with covariance C: erf gives Williams' arcsine
  kernel (2/pi) asin(2 C(d) / (1 + 2 C(0))); ReLU Cho & Saul's degree-1 arc-cosine kernel
  C(0)/(2 pi) (sin t + (pi - t) cos t), t = arccos(C(d)/C(0)); leaky ReLU with slope a, written
  a x + (1 - a) relu(x), gives a C(d) + (1 - a)² relu-kernel(C(d)) (the cross terms are E[x relu(y)]
  = C/2); ELU, SiLU and the sigmoid have no closed form and use Gauss-Hermite quadrature.
* **stride-2 subsampling**: M(2d). **2x2 average pooling**: M convolved with the autocorrelation
  of the box filter, then subsampled.
* **2x upsampling** (nearest, bilinear, bicubic as ``nn.Upsample`` does them) is zero insertion
  followed by a fixed filter h. Its output is cyclostationary: the covariance depends on the phase
  of x modulo 2. We keep the phase average (M at even offsets / 4, zero elsewhere, convolved with
  the autocorrelation of h), the stationary approximation the paper uses. It is exact for
  everything linear after it up to the next non-linearity, approximate through a non-linearity.
* **batch / instance norm** (at init: no affine change) removes each channel's spatial mean and
  scales it to unit variance: on the periodic grid, M minus its grid average, divided by that at 0.
  The spatial variance estimate is taken as exact (large images).
* **concatenation** of branches: the next convolution sums over all input channels, so it sees the
  channel-weighted average of the branches' second moments.

Everything is computed on a periodic grid (the torus of the given shape), where stationarity is
exact and the fixed filters are FFT products; zero or reflect padding at real image borders is not
modelled. The first convolution sees the input's M(d) = input_std² [d = 0] + input_mean²; only
these two moments matter in the limit (the DIP's uniform noise in [0, s) has mean s/2, std s/sqrt 12).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dip_lightning.errors import (
    ConfigError,
    check_choice,
    check_finite,
    check_in_range,
    check_int,
    check_positive,
)

__all__ = [
    "ACTIVATIONS",
    "UPSAMPLE_MODES",
    "Activation",
    "Concat",
    "Conv",
    "Downsample",
    "Layer",
    "Norm",
    "Upsample",
    "required_multiple",
    "stationary_moments",
]

ACTIVATIONS: tuple[str, ...] = ("erf", "relu", "leaky_relu", "elu", "silu", "sigmoid")
UPSAMPLE_MODES: tuple[str, ...] = ("nearest", "bilinear", "bicubic")
DOWNSAMPLE_MODES: tuple[str, ...] = ("stride", "avg")
_RHO_POINTS = 2049


@dataclass(frozen=True)
class Conv:
    """A "same" convolution; ``stride`` 2 subsamples. ``weight_var`` is fan-in times the weights'
    variance (PyTorch's default init: 1/3); ``bias_var`` is the biases' variance."""

    kernel: int = 3
    stride: int = 1
    weight_var: float = 1.0
    bias_var: float = 0.0


@dataclass(frozen=True)
class Activation:
    """An elementwise non-linearity; ``slope`` is the negative slope of ``leaky_relu``."""

    name: str = "relu"
    slope: float = 0.2


@dataclass(frozen=True)
class Norm:
    """Batch or instance norm at init: per-channel spatial centring and scaling to unit variance."""


@dataclass(frozen=True)
class Upsample:
    """2x upsampling as ``nn.Upsample(scale_factor=2, mode=mode)`` (align_corners=False)."""

    mode: str = "bilinear"


@dataclass(frozen=True)
class Downsample:
    """2x downsampling: ``stride`` keeps every second pixel, ``avg`` is 2x2 average pooling."""

    mode: str = "stride"


@dataclass(frozen=True)
class Concat:
    """Branches applied to the same input, their outputs stacked along the channels.

    ``channels`` gives each branch's number of channels: only their proportions matter.
    """

    branches: tuple[tuple[Layer, ...], ...]
    channels: tuple[int, ...]


Layer = Conv | Activation | Norm | Upsample | Downsample | Concat


@dataclass(frozen=True)
class _Group:
    """Channels sharing one second moment: ``fraction`` of all channels, per-pixel ``mean``, and
    whether they are zero-mean Gaussian (what a non-linearity's closed form needs)."""

    fraction: float
    moment: Tensor
    mean: float
    gaussian: bool


# ------------------------------------------------------------------------------------- filters
def _cubic(t: float, a: float = -0.75) -> float:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0


def upsampling_filter(mode: str) -> dict[int, float]:
    """Taps h(j) with upsampled u(y) = sum_j h(j) v(y - j), v the zero-inserted input (v(2m) = a(m)).

    They reproduce ``nn.Upsample(scale_factor=2, mode, align_corners=False)`` away from the border.
    """
    if mode == "nearest":
        return {0: 1.0, 1: 1.0}
    if mode == "bilinear":
        return {-1: 0.25, 0: 0.75, 1: 0.75, 2: 0.25}
    far, near = (_cubic(1.75), _cubic(1.25)), (_cubic(0.75), _cubic(0.25))
    taps = [far[0], far[1], near[0], near[1], near[1], near[0], far[1], far[0]]
    return dict(zip(range(-3, 5), taps))


def _filter_power(taps: dict[int, float], shape: tuple[int, int]) -> Tensor:
    """|H(f)|² on the grid for the separable 2-D filter h ⊗ h: the FFT of its autocorrelation."""
    spectra = []
    for n in shape:
        h = torch.zeros(n, dtype=torch.float64)
        for j, value in taps.items():
            h[j % n] += value
        spectra.append(torch.fft.fft(h).abs().square())
    return spectra[0][:, None] * spectra[1][None, :]


def _filter_moment(moment: Tensor, taps: dict[int, float]) -> Tensor:
    """Second moment after a fixed linear filter: M convolved with the filter's autocorrelation."""
    power = _filter_power(taps, tuple(moment.shape))
    return torch.fft.ifft2(torch.fft.fft2(moment) * power).real


def _upsample_moment(moment: Tensor, mode: str) -> Tensor:
    height, width = moment.shape
    inserted = torch.zeros(2 * height, 2 * width, dtype=moment.dtype)
    inserted[::2, ::2] = moment / 4.0  # phase average of the zero-inserted field
    return _filter_moment(inserted, upsampling_filter(mode))


# -------------------------------------------------------------------------------- activations
def _gauss_hermite(nodes: int) -> tuple[Tensor, Tensor]:
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    return torch.from_numpy(x), torch.from_numpy(w / math.sqrt(2 * math.pi))


_ELEMENTWISE: dict[str, Callable[[Tensor], Tensor]] = {
    "elu": torch.nn.functional.elu,
    "silu": torch.nn.functional.silu,
    "sigmoid": torch.sigmoid,
}


def _quadrature_moment(fn: Callable[[Tensor], Tensor], cov: Tensor, nodes: int) -> tuple[Tensor, float]:
    """E[f(u) f(v)] for (u, v) zero-mean Gaussian with variance cov(0) and covariance cov(d).

    Gauss-Hermite quadrature over u and over v given u, on a fine grid of correlations (cosine
    spaced, dense near +-1) and linearly interpolated: the cost does not grow with the image.
    """
    x, w = _gauss_hermite(nodes)
    std = math.sqrt(float(cov[0, 0]))
    fu = fn(std * x)
    grid = torch.cos(torch.linspace(math.pi, 0.0, _RHO_POINTS, dtype=torch.float64))[:, None, None]
    v = std * (grid * x[None, :, None] + torch.sqrt((1 - grid.square()).clamp_min(0.0)) * x[None, None, :])
    table = ((fn(v) * w).sum(-1) @ (fu * w)).numpy()  # E[f(u) f(v)] at each grid correlation
    rho = (cov / float(cov[0, 0])).clamp(-1.0, 1.0).numpy()
    moment = np.interp(rho, grid.reshape(-1).numpy(), table)
    return torch.from_numpy(moment), float((fu * w).sum())


def _relu_moment(cov: Tensor) -> Tensor:
    var = float(cov[0, 0])
    theta = torch.arccos((cov / var).clamp(-1.0, 1.0))
    return var / (2 * math.pi) * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta))


def activation_moment(cov: Tensor, layer: Activation, nodes: int = 64) -> tuple[Tensor, float]:
    """Second moment and mean of f(h) for h a zero-mean stationary Gaussian field of covariance cov."""
    var = float(cov[0, 0])
    if layer.name == "erf":
        return 2 / math.pi * torch.arcsin((2 * cov / (1 + 2 * var)).clamp(-1.0, 1.0)), 0.0
    if var <= 0:
        return torch.zeros_like(cov), 0.0 if layer.name != "sigmoid" else 0.5
    if layer.name in ("relu", "leaky_relu"):
        a = layer.slope if layer.name == "leaky_relu" else 0.0
        return a * cov + (1 - a) ** 2 * _relu_moment(cov), (1 - a) * math.sqrt(var / (2 * math.pi))
    return _quadrature_moment(_ELEMENTWISE[layer.name], cov, nodes)


# ------------------------------------------------------------------------------- propagation
def _check_layer(layer: object, setting: str) -> None:
    """Validate one layer's settings (not its place in the network)."""
    if isinstance(layer, Conv):
        kernel = check_int(f"{setting}.kernel", layer.kernel, 1)
        if kernel % 2 == 0:
            raise ConfigError(f"{setting}.kernel", kernel, "must be a positive odd integer")
        check_choice(f"{setting}.stride", layer.stride, (1, 2))
        check_positive(f"{setting}.weight_var", layer.weight_var)
        check_positive(f"{setting}.bias_var", layer.bias_var, allow_zero=True)
    elif isinstance(layer, Activation):
        check_choice(f"{setting}.name", layer.name, ACTIVATIONS)
        check_in_range(f"{setting}.slope", layer.slope, 0.0, 1.0, high_open=False)
    elif isinstance(layer, Upsample):
        check_choice(f"{setting}.mode", layer.mode, UPSAMPLE_MODES)
    elif isinstance(layer, Downsample):
        check_choice(f"{setting}.mode", layer.mode, DOWNSAMPLE_MODES)
    elif isinstance(layer, Concat):
        if not layer.branches or len(layer.branches) != len(layer.channels):
            raise ConfigError(f"{setting}.channels", layer.channels, "needs one channel count per branch")
        for k, count in enumerate(layer.channels):
            check_int(f"{setting}.channels[{k}]", count, 1)
    elif not isinstance(layer, Norm):
        allowed = "must be Conv, Activation, Norm, Upsample, Downsample or Concat"
        raise ConfigError(setting, layer, allowed)


def required_multiple(layers: Sequence[Layer], setting: str = "gp.layers") -> int:
    """Grid sides must be divisible by this: 2 to the most downsamplings net of upsamplings on a path."""

    def walk(chain: Sequence[Layer], prefix: str, level: int) -> tuple[int, int]:
        deepest = level
        for i, layer in enumerate(chain):
            _check_layer(layer, f"{prefix}[{i}]")
            if isinstance(layer, Concat):
                ends = [
                    walk(branch, f"{prefix}[{i}].branches[{k}]", level)
                    for k, branch in enumerate(layer.branches)
                ]
                deepest = max([deepest, *(d for d, _ in ends)])
                if len({end for _, end in ends}) > 1:
                    raise ConfigError(f"{prefix}[{i}]", layer, "its branches end at different resolutions")
                level = ends[0][1]
            elif isinstance(layer, Downsample) or (isinstance(layer, Conv) and layer.stride == 2):
                level += 1
            elif isinstance(layer, Upsample):
                level -= 1
            deepest = max(deepest, level)
        return deepest, level

    deepest, _ = walk(list(layers), setting, 0)
    return 2**deepest


def _apply(groups: list[_Group], layer: Layer, setting: str, nodes: int) -> list[_Group]:
    if isinstance(layer, Conv):
        moment = sum(g.fraction * g.moment for g in groups) * layer.weight_var + layer.bias_var
        if layer.stride == 2:
            moment = moment[::2, ::2].contiguous()
        return [_Group(1.0, moment, 0.0, True)]
    if isinstance(layer, Concat):
        total = float(sum(layer.channels))
        out: list[_Group] = []
        for k, (branch, count) in enumerate(zip(layer.branches, layer.channels)):
            ends = _run(groups, branch, f"{setting}.branches[{k}]", nodes)
            out += [dataclasses.replace(g, fraction=g.fraction * count / total) for g in ends]
        return out
    result = []
    for g in groups:
        if isinstance(layer, Activation):
            if not g.gaussian:
                raise ConfigError(
                    setting, layer, "a non-linearity needs a Gaussian input: put a Conv (or Norm) before it"
                )
            moment, mean = activation_moment(g.moment, layer, nodes)
            result.append(_Group(g.fraction, moment, mean, False))
        elif isinstance(layer, Norm):
            centred = g.moment - g.moment.mean()
            scale = float(centred[0, 0])
            centred = centred / scale if scale > 0 else centred
            result.append(_Group(g.fraction, centred, 0.0, g.gaussian))
        elif isinstance(layer, Upsample):
            result.append(dataclasses.replace(g, moment=_upsample_moment(g.moment, layer.mode)))
        elif layer.mode == "stride":
            result.append(dataclasses.replace(g, moment=g.moment[::2, ::2].contiguous()))
        else:
            pooled = _filter_moment(g.moment, {0: 0.5, 1: 0.5})[::2, ::2].contiguous()
            result.append(dataclasses.replace(g, moment=pooled))
    return result


def _run(groups: list[_Group], layers: Sequence[Layer], setting: str, nodes: int) -> list[_Group]:
    for i, layer in enumerate(layers):
        groups = _apply(groups, layer, f"{setting}[{i}]", nodes)
    return groups


def stationary_moments(
    layers: Sequence[Layer],
    shape: tuple[int, int],
    input_std: float = 1.0,
    input_mean: float = 0.0,
    *,
    quadrature_nodes: int = 64,
    setting: str = "gp.layers",
) -> tuple[float, Tensor]:
    """Mean and stationary covariance (float64, (H, W) offsets on the periodic grid) of the output.

    ``covariance[dy % H, dx % W]`` is Cov(out(y, x), out(y + dy, x + dx)) for a network applied to a
    periodic input of the given shape, with i.i.d. input pixels of mean ``input_mean`` and standard
    deviation ``input_std``. The output must be a single group of channels (the last layer is not a
    Concat).
    """
    multiple = required_multiple(layers, setting)
    check_positive("gp.input_std", input_std, allow_zero=True)
    check_finite("gp.input_mean", input_mean)
    height, width = (int(s) for s in shape)
    if height % multiple or width % multiple or height < multiple or width < multiple:
        raise ConfigError(
            setting, f"{len(layers)} layers", f"need grid sides divisible by {multiple}, got {height}x{width}"
        )
    moment = torch.full((height, width), float(input_mean) ** 2, dtype=torch.float64)
    moment[0, 0] += float(input_std) ** 2
    start = _Group(1.0, moment, float(input_mean), gaussian=float(input_mean) == 0.0)
    groups = _run([start], layers, setting, check_int("gp.quadrature_nodes", quadrature_nodes, 8))
    if len(groups) != 1:
        raise ConfigError(setting, "Concat", "the network must not end with a Concat: add a Conv after it")
    (out,) = groups
    return out.mean, out.moment - out.mean**2
