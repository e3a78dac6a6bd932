"""Test log-likelihood of the ground truth under a Gaussian predictive distribution.

Antorán et al. (linearised DIP, TMLR 2023) rank uncertainty methods by log N(x_true; mean, Sigma)
per pixel, a proper scoring rule that rewards correlations as well as per-pixel variances. Where
the image is too large for one covariance, Sigma is made block-diagonal over p x p patches that
tile the image; each patch contributes its own Gaussian log-density and the sum is divided by the
number of pixels. Patches start at the top-left corner every p pixels; when a side is not a
multiple of p the last patch of that row or column takes the remaining pixels (it is p to 2p - 1
wide), as the reference code tiles. Channels are scored separately (no cross-channel terms).

The covariance comes from a :class:`BlockCovariance`: any object that returns the covariance of a
set of image elements. :class:`SampleCovariance` estimates it from Monte Carlo samples, with the
reference's shrinkage (C + diag C) / 2 that keeps a covariance of fewer samples than pixels
invertible; :class:`DenseCovariance` holds an analytic one (a linearised or GP posterior). A
stabilising ``jitter`` is added to every diagonal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_int, check_positive
from dip_lightning.metrics.image import check_same_shape

__all__ = [
    "BlockCovariance",
    "DenseCovariance",
    "DiagonalCovariance",
    "SampleCovariance",
    "check_patch_size",
    "gaussian_loglik",
    "image_noise_variance",
    "isotropic_loglik",
    "optimal_isotropic_variance",
    "patch_index_groups",
    "residual_noise_variance",
]

DEFAULT_JITTER = 1e-6
"""The reference's ``noise_x_correction_term`` default: added to every covariance diagonal."""
BLOCK_ELEMENTS = 1 << 22
"""Most covariance entries assembled at once (float64: 32 MiB); more patches go in chunks."""


@runtime_checkable
class BlockCovariance(Protocol):
    """The predictive covariance of an image (C, H, W), read block by block.

    ``block_covariance(index)`` takes flat indices (B, n) into the C*H*W elements (channel-major,
    then rows) and returns the (B, n, n) covariance of each row's elements. A method with an
    analytic posterior implements this; the full covariance is the block of all indices.
    """

    def block_covariance(self, index: Tensor) -> Tensor: ...


class SampleCovariance:
    """The covariance of Monte Carlo samples (T, C, H, W) about their own mean (divided by T), or
    about a known ``centre`` (e.g. zeros for the zero-mean samples of Matheron's rule, which the
    reference uses as they are).

    ``shrink`` replaces each block C by (C + diag C) / 2 (the reference's
    ``reweight_off_diagonal_entries``, after Maddox et al.): with fewer samples than pixels in a
    block the estimate is singular, and halving the off-diagonal entries makes it positive definite
    wherever the variances are positive, while keeping every variance.
    """

    def __init__(self, samples: Tensor, shrink: bool = True, centre: Tensor | None = None) -> None:
        if samples.ndim != 4 or samples.shape[0] < 2:
            raise ValueError(f"samples must be (T, C, H, W) with T >= 2, got {tuple(samples.shape)}")
        flat = samples.detach().reshape(samples.shape[0], -1).double()
        if centre is None:
            self.centred = flat - flat.mean(dim=0, keepdim=True)
        else:
            self.centred = flat - centre.detach().reshape(1, -1).to(flat)
        self.shrink = bool(shrink)

    def block_covariance(self, index: Tensor) -> Tensor:
        picked = self.centred[:, index.to(self.centred.device)]  # (T, B, n)
        cov = torch.einsum("tbi,tbj->bij", picked, picked) / picked.shape[0]
        if self.shrink:
            cov = 0.5 * (cov + torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1)))
        return cov


class DenseCovariance:
    """A full covariance matrix (N, N) over the C*H*W image elements, e.g. an exact posterior."""

    def __init__(self, matrix: Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"a covariance matrix must be square, got {tuple(matrix.shape)}")
        self.matrix = matrix.detach()

    def block_covariance(self, index: Tensor) -> Tensor:
        index = index.to(self.matrix.device)
        return self.matrix[index[:, :, None], index[:, None, :]].double()


class DiagonalCovariance:
    """Independent pixels with the given variances (C, H, W) or (1, C, H, W): every patch size
    then gives the same value, the sum of per-pixel Gaussian log-densities."""

    def __init__(self, variance: Tensor) -> None:
        self.variance = variance.detach().reshape(-1)

    def block_covariance(self, index: Tensor) -> Tensor:
        return torch.diag_embed(self.variance[index.to(self.variance.device)].double())


def check_patch_size(patch_size: object, image_shape: tuple[int, int], setting: str = "patch_size") -> int:
    """A patch side in [1, min(H, W)], or a ConfigError naming ``setting``."""
    size = check_int(setting, patch_size, 1)
    if size > min(image_shape):
        raise ConfigError(
            setting,
            patch_size,
            f"a patch side of at most {min(image_shape)} (the image is {tuple(image_shape)})",
        )
    return size


def _axis_runs(length: int, size: int) -> list[tuple[int, int, int]]:
    """(start, count, width) runs of patches along one axis: full patches, then the last one
    extended to the end of the axis."""
    count = length // size
    last_start = (count - 1) * size
    runs = [(0, count - 1, size)] if count > 1 else []
    runs.append((last_start, 1, length - last_start))
    return runs


def patch_index_groups(channels: int, image_shape: tuple[int, int], patch_size: int) -> list[Tensor]:
    """Flat element indices of every patch, grouped by patch shape: a list of (B_g, n_g) tensors.

    Together they cover each element exactly once (see the module docstring for the tiling).
    """
    height, width = image_shape
    size = check_patch_size(patch_size, image_shape)
    elements = torch.arange(channels * height * width).reshape(channels, height, width)
    groups = []
    for r0, rows, rh in _axis_runs(height, size):
        for c0, cols, cw in _axis_runs(width, size):
            block = elements[:, r0 : r0 + rows * rh, c0 : c0 + cols * cw]
            block = block.reshape(channels, rows, rh, cols, cw).permute(0, 1, 3, 2, 4)
            groups.append(block.reshape(channels * rows * cols, rh * cw))
    return groups


def _chunks(index: Tensor) -> Iterator[Tensor]:
    n = index.shape[1]
    step = max(1, BLOCK_ELEMENTS // (n * n))
    yield from index.split(step)


def _block_logdensity(diff: Tensor, cov: Tensor, jitter: float) -> Tensor:
    """Sum over blocks of log N(diff; 0, cov + jitter I), diff (B, n), cov (B, n, n), float64."""
    n = cov.shape[-1]
    cov = cov + jitter * torch.eye(n, dtype=cov.dtype, device=cov.device)
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        raise ValueError(
            f"a predictive covariance block of {n} elements is not positive definite even with "
            f"jitter {jitter:g}: raise the jitter or shrink the sample covariance"
        )
    white = torch.linalg.solve_triangular(chol, diff.unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum()
    return -0.5 * (white.square().sum() + logdet + diff.numel() * math.log(2.0 * math.pi))


def gaussian_loglik(
    truth: Tensor,
    mean: Tensor,
    covariance: BlockCovariance,
    patch_size: int | None = None,
    jitter: float = DEFAULT_JITTER,
) -> float:
    """Per-pixel log N(truth; mean, Sigma) with Sigma block-diagonal over ``patch_size`` patches.

    ``truth`` and ``mean`` are (1, C, H, W) (or (C, H, W)); ``patch_size=None`` takes the full
    covariance of all C*H*W elements as one block. Patch log-densities are summed and divided by
    the number of elements (natural log). ``jitter`` (> 0) is added to every diagonal.
    """
    check_same_shape(truth, mean, ("truth", "mean"))
    check_positive("loglik.jitter", jitter)
    image = truth.reshape(-1, *truth.shape[-2:])
    channels, shape = image.shape[0], (int(image.shape[-2]), int(image.shape[-1]))
    diff = (truth.detach() - mean.detach()).reshape(-1).double()
    if patch_size is None:
        groups = [torch.arange(diff.numel()).unsqueeze(0)]
    else:
        groups = patch_index_groups(channels, shape, patch_size)
    total = torch.zeros((), dtype=torch.float64, device=diff.device)
    for group in groups:
        for index in _chunks(group):
            index = index.to(diff.device)
            cov = covariance.block_covariance(index).to(diff.device, torch.float64)
            total = total + _block_logdensity(diff[index], cov, jitter)
    return float(total) / diff.numel()


def isotropic_loglik(truth: Tensor, mean: Tensor, variance: float) -> float:
    """Per-pixel log N(truth; mean, variance I): a point estimate scored with one variance (the
    paper's DIP rows, sigma_y^2 = 1 or an estimated noise level mapped to image space)."""
    check_same_shape(truth, mean, ("truth", "mean"))
    variance = check_positive("loglik.variance", variance)
    sq = (truth.detach() - mean.detach()).double().square().mean()
    return float(-0.5 * (math.log(2.0 * math.pi * variance) + sq / variance))


def optimal_isotropic_variance(truth: Tensor, mean: Tensor) -> float:
    """The variance that maximises :func:`isotropic_loglik`: the mean squared error (an oracle,
    since it uses the ground truth; an upper bound for any isotropic Gaussian on this estimate)."""
    check_same_shape(truth, mean, ("truth", "mean"))
    return float((truth.detach() - mean.detach()).double().square().mean())


@torch.no_grad()
def residual_noise_variance(
    operator: Callable[[Tensor], Tensor], mean: Tensor, observation: Tensor, observed: Tensor | None = None
) -> float:
    """The maximum-likelihood sigma_y^2 of y ~ N(A mean, sigma_y^2 I) for a point estimate: the
    mean squared residual |A mean - y|^2 over the observed measurement elements."""
    residual = (operator(mean.detach()) - observation).abs().double().square()
    if observed is not None:
        residual = residual[observed.expand_as(residual)]
    return float(residual.mean())


@torch.no_grad()
def operator_matrix(
    operator: Callable[[Tensor], Tensor], channels: int, image_shape: tuple[int, int]
) -> Tensor:
    """The dense matrix (M, C*H*W) of a linear operator, one image basis vector per column
    (complex measurements as real and imaginary rows)."""
    n = channels * image_shape[0] * image_shape[1]
    tensors = [*operator.parameters(), *operator.buffers()] if isinstance(operator, torch.nn.Module) else []
    device = tensors[0].device if tensors else torch.device("cpu")
    columns = []
    for start in range(0, n, 256):
        stop = min(n, start + 256)
        basis = torch.zeros(stop - start, n, device=device)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        out = operator(basis.reshape(-1, channels, *image_shape)).reshape(stop - start, -1)
        if out.is_complex():
            out = torch.cat([out.real, out.imag], dim=1)
        columns.append(out.double().cpu())
    return torch.cat(columns).T


def image_noise_variance(
    operator: Callable[[Tensor], Tensor],
    noise_variance: float,
    channels: int,
    image_shape: tuple[int, int],
    rank: int = 100,
    max_pixels: int = 4096,
) -> float:
    """The measurement noise variance mapped to image space: sigma_y^2 times the mean diagonal of
    pinv(A^T A), the pseudo-inverse truncated to the ``rank`` largest singular values (the
    reference's image noise correction term). Needs the dense A, so images of at most
    ``max_pixels`` elements."""
    check_positive("loglik.noise_variance", noise_variance)
    rank = check_int("loglik.rank", rank, 1)
    n = channels * image_shape[0] * image_shape[1]
    if n > max_pixels:
        raise ConfigError("loglik.max_pixels", max_pixels, f"at least {n} to assemble A for this image")
    matrix = operator_matrix(operator, channels, image_shape)
    _, singular, vh = torch.linalg.svd(matrix, full_matrices=False)
    keep = min(rank, int((singular > singular[0] * 1e-12).sum()))
    diag = (vh[:keep] / singular[:keep, None]).square().sum(dim=0)
    return float(noise_variance * diag.mean())
