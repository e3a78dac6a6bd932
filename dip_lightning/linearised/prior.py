"""The structured Gaussian prior on the convolution weights of the linearised DIP.

The convolutions are grouped into blocks: the convolutions of one container module (a scale's
encoder, decoder or skip branch, or the output layer) with the same kernel size. A block of
k x k kernels (k > 1) gets one Gaussian-process prior over the k^2 filter positions, with covariance
``variance * exp(-||p - p'|| / lengthscale)`` (distances in pixels), shared by every filter of the
block; a block of 1 x 1 kernels gets a plain Normal prior. This is the grouping of the reference
code (one prior per block, not per layer; GP priors on 3 x 3 and Normal priors on 1 x 1
convolutions).

The parameter vector theta is the concatenation of the blocks' weights, each weight flattened as
(out, in, kh, kw), so that every block is one contiguous slice of (filters, k^2) rows.

The exponential kernel takes only a few distinct values on a k x k grid (six on 3 x 3), so every
quantity that is linear in the prior covariance is a sum over those *distance classes* with
coefficients ``variance * exp(-distance / lengthscale)``: the marginal likelihood precomputes one
matrix per class and never touches the parameters again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dip_lightning.errors import ConfigError, check_positive

JITTER = 1e-6
"""Added to the diagonal of every unscaled kernel matrix (the reference code's value)."""


@dataclass(frozen=True)
class Block:
    """One prior block: the weights it covers and where they sit in the parameter vector."""

    name: str
    weights: tuple[str, ...]
    kernel: tuple[int, int]
    start: int
    stop: int

    @property
    def positions(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def filters(self) -> int:
        return (self.stop - self.start) // self.positions

    @property
    def is_gp(self) -> bool:
        return self.positions > 1


def conv_blocks(net: nn.Module) -> list[Block]:
    """The prior blocks of ``net``: its ``nn.Conv2d`` weights grouped by parent module and kernel.

    Biases and normalisation parameters are not part of the linearisation.
    """
    groups: dict[tuple[str, tuple[int, int]], list[tuple[str, int]]] = {}
    for name, module in net.named_modules():
        if type(module) is not nn.Conv2d:
            continue
        parent = name.rpartition(".")[0]
        kernel = tuple(int(k) for k in module.kernel_size)
        groups.setdefault((parent, kernel), []).append((f"{name}.weight", module.weight.numel()))
    if not groups:
        raise ConfigError(
            "model", type(net).__name__, "the linearised DIP needs a network with nn.Conv2d layers"
        )
    blocks, start = [], 0
    for (parent, kernel), weights in groups.items():
        size = sum(n for _, n in weights)
        label = (parent or "output") + ("" if kernel == (1, 1) else f"[{kernel[0]}x{kernel[1]}]")
        blocks.append(Block(label, tuple(w for w, _ in weights), kernel, start, start + size))
        start += size
    return blocks


def distance_classes(kernel: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The distinct distances between the positions of a kernel grid and their 0/1 masks.

    Returns ``distances`` (K,) and ``masks`` (K, k^2, k^2) with sum(masks) = all ones.
    """
    rows, cols = torch.meshgrid(torch.arange(kernel[0]), torch.arange(kernel[1]), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], dim=1).double()
    dist = torch.cdist(coords, coords)
    rounded = torch.round(dist * 1e6) / 1e6
    values = torch.unique(rounded)
    masks = torch.stack([(rounded == v).double() for v in values])
    return values, masks


class BlockPrior(nn.Module):
    """The hyperparameters (log variance per block, log lengthscale per GP block) and the prior
    covariance they define.

    Args:
        blocks: from :func:`conv_blocks`.
        variance, lengthscale: initial values (the reference code: 1 and 0.1).
    """

    def __init__(self, blocks: list[Block], variance: float = 1.0, lengthscale: float = 0.1) -> None:
        super().__init__()
        check_positive("method.mll.init_prior_variance", variance)
        check_positive("method.mll.init_lengthscale", lengthscale)
        self.blocks = list(blocks)
        self.num_params = self.blocks[-1].stop
        self.gp_index = {i: j for j, i in enumerate(i for i, b in enumerate(self.blocks) if b.is_gp)}
        self.log_variance = nn.Parameter(
            torch.full((len(self.blocks),), math.log(variance), dtype=torch.float64)
        )
        self.log_lengthscale = nn.Parameter(
            torch.full((len(self.gp_index),), math.log(lengthscale), dtype=torch.float64)
        )
        self.classes = [distance_classes(b.kernel) for b in self.blocks]

    # ---------------------------------------------------------------- kernel matrices
    def class_coefficients(self, i: int) -> Tensor:
        """(K,) coefficients of block i's distance classes: its covariance is sum_k c_k M_k
        (plus ``variance * JITTER`` on the diagonal, which is the distance-zero class)."""
        distances, _ = self.classes[i]
        variance = self.log_variance[i].exp()
        if not self.blocks[i].is_gp:
            return variance * (1.0 + JITTER) * torch.ones(1, dtype=torch.float64, device=distances.device)
        lengthscale = self.log_lengthscale[self.gp_index[i]].exp()
        coeffs = torch.exp(-distances.to(lengthscale.device) / lengthscale)
        coeffs = coeffs + JITTER * (distances == 0).to(coeffs.dtype).to(coeffs.device)
        return variance * coeffs

    def kernel_matrix(self, i: int) -> Tensor:
        """Block i's (k^2, k^2) covariance of one filter."""
        _, masks = self.classes[i]
        return torch.einsum("k,kab->ab", self.class_coefficients(i), masks.to(self.log_variance.device))

    # ---------------------------------------------------------------- on parameter vectors
    def _blockwise(self, v: Tensor, matrices: list[Tensor]) -> Tensor:
        out = []
        for block, matrix in zip(self.blocks, matrices):
            chunk = v[..., block.start : block.stop]
            shaped = chunk.reshape(*chunk.shape[:-1], block.filters, block.positions)
            out.append((shaped @ matrix.to(device=v.device, dtype=v.dtype).T).reshape(chunk.shape))
        return torch.cat(out, dim=-1)

    def apply_cov(self, v: Tensor) -> Tensor:
        """Sigma_theta v for v (..., P)."""
        return self._blockwise(v, [self.kernel_matrix(i) for i in range(len(self.blocks))])

    def sample(self, num: int, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
        """(num, P) draws from N(0, Sigma_theta)."""
        # drawn on the CPU (where the generator lives), then moved
        eps = torch.randn(num, self.num_params, generator=generator, dtype=dtype).to(self.log_variance.device)
        chol = [torch.linalg.cholesky(self.kernel_matrix(i)) for i in range(len(self.blocks))]
        return self._blockwise(eps, chol)

    def weights_norm(self, scatter: list[Tensor]) -> Tensor:
        """theta^T Sigma_theta^{-1} theta from the blocks' scatter matrices sum_f w_f w_f^T."""
        total = torch.zeros((), dtype=torch.float64, device=self.log_variance.device)
        for i, s in enumerate(scatter):
            total = total + torch.trace(torch.linalg.solve(self.kernel_matrix(i), s))
        return total

    def scatter(self, theta: Tensor) -> list[Tensor]:
        """Per block, sum over filters of w_f w_f^T, (k^2, k^2)."""
        out = []
        for block in self.blocks:
            w = theta[block.start : block.stop].double().to(self.log_variance.device)
            w = w.reshape(block.filters, block.positions)
            out.append(w.T @ w)
        return out

    def describe(self) -> dict[str, float]:
        """The fitted hyperparameters by block name, for metrics.json."""
        values: dict[str, float] = {}
        for i, block in enumerate(self.blocks):
            values[f"prior_variance/{block.name}"] = float(self.log_variance[i].detach().exp())
            if block.is_gp:
                values[f"lengthscale/{block.name}"] = float(
                    self.log_lengthscale[self.gp_index[i]].detach().exp()
                )
        return values
