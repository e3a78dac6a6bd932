"""The Jacobian of the network's image with respect to its convolution weights.

``J`` maps a change of the convolution weights (the parameter vector of
:mod:`dip_lightning.linearised.prior`, blocks in order) to the change of the flattened image;
biases and normalisation parameters stay at their fitted values. Products with J and J^T come
from forward- and reverse-mode differentiation of the network (``torch.func.jvp`` / ``vjp``),
batched with ``vmap``; the full matrix (small images) is assembled from J^T products, and a
low-rank factorisation J ~ U S V^T (large images) by a randomised range finder that only needs
those products.

Normalisation layers use each sample's own statistics (as in training with a batch of one), so the
linearised function is the one DIP fitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap

from dip_lightning.linearised.prior import Block
from dip_lightning.models.layers import per_sample_norm


class LinearisedNetwork:
    """f(theta* + delta) ~ f(theta*) + J delta around the network's current convolution weights.

    Args:
        net: the fitted network (left unchanged).
        net_input: its input z, (1, C, H, W).
        blocks: the prior blocks, which fix the order of the parameter vector.
        image_of: maps the network output to the image channels (drops a log-precision channel).
    """

    def __init__(
        self, net: nn.Module, net_input: Tensor, blocks: list[Block], image_of: Callable[[Tensor], Tensor]
    ) -> None:
        self.net = net
        self.z = net_input.detach()
        self.blocks = blocks
        self.image_of = image_of
        self.names = [name for block in blocks for name in block.weights]
        named = dict(net.named_parameters())
        self.fixed = {k: v.detach() for k, v in named.items() if k not in self.names}
        self.fixed.update(dict(net.named_buffers()))
        self.shapes = [named[name].shape for name in self.names]
        self.sizes = [named[name].numel() for name in self.names]
        self.theta = torch.cat([named[name].detach().flatten() for name in self.names])
        with torch.no_grad():
            self.output = self(self.theta)
        self.num_pixels = self.output.numel()

    @property
    def num_params(self) -> int:
        return self.theta.numel()

    def _unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        parts = torch.split(theta, self.sizes)
        return {name: p.reshape(shape) for name, p, shape in zip(self.names, parts, self.shapes)}

    def __call__(self, theta: Tensor) -> Tensor:
        """The flattened image f(theta) of the network with conv weights ``theta``."""
        with per_sample_norm(self.net):
            out = functional_call(self.net, {**self.fixed, **self._unflatten(theta)}, (self.z,))
        return self.image_of(out).flatten()

    def jvp(self, v: Tensor) -> Tensor:
        """J v for v (B, P): (B, N)."""
        theta = self.theta
        return vmap(lambda t: jvp(self, (theta,), (t.to(theta.dtype),))[1])(v)

    def vjp(self, u: Tensor) -> Tensor:
        """J^T u for u (B, N): (B, P)."""
        _, pullback = vjp(self, self.theta)
        return vmap(lambda t: pullback(t.to(self.theta.dtype))[0])(u)

    def assemble(self, chunk: int = 128) -> Tensor:
        """The full (N, P) Jacobian, row blocks from J^T e_i."""
        rows = []
        eye = torch.eye(self.num_pixels, device=self.theta.device, dtype=self.theta.dtype)
        for start in range(0, self.num_pixels, chunk):
            rows.append(self.vjp(eye[start : start + chunk]))
        return torch.cat(rows)

    def low_rank(self, rank: int, oversampling: int = 5, chunk: int = 32, seed: int = 0) -> LowRankJacobian:
        """J ~ U diag(S) V^T of the given rank (Halko et al.'s randomised range finder, one pass of
        J products and one of J^T products)."""
        cols = min(rank + oversampling, self.num_pixels, self.num_params)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        omega = torch.randn(cols, self.num_params, generator=generator).to(self.theta)
        y = torch.cat([self.jvp(omega[s : s + chunk]) for s in range(0, cols, chunk)])  # (cols, N)
        q, _ = torch.linalg.qr(y.T.double())  # (N, cols)
        qt = q.T.to(self.theta.dtype)
        b = torch.cat([self.vjp(qt[s : s + chunk]) for s in range(0, cols, chunk)])  # (cols, P) = Q^T J
        # B B^T = Ub S^2 Ub^T and V = B^T Ub / S: the (cols, cols) eigenproblem instead of an SVD
        # of the (cols, P) matrix, and V kept in the network's precision (P can be millions)
        gram = (b.double() @ b.double().T) if b.shape[1] < 4_000_000 else (b @ b.T).double()
        eigval, ub = torch.linalg.eigh(gram)
        order = torch.argsort(eigval, descending=True)[: min(rank, cols)]
        s = eigval[order].clamp_min(1e-300).sqrt()
        ub = ub[:, order]
        v = ((b.T @ ub.to(b.dtype)) / s.to(b.dtype)).contiguous()
        return LowRankJacobian(u=(q @ ub), s=s, v=v)


@dataclass
class LowRankJacobian:
    """J ~ U diag(S) V^T: U (N, r) and S (r,) float64, V (P, r) in the network's precision."""

    u: Tensor
    s: Tensor
    v: Tensor

    def jvp(self, v: Tensor) -> Tensor:
        return ((v.to(self.v.dtype) @ self.v).double() * self.s) @ self.u.T

    def vjp(self, u: Tensor) -> Tensor:
        return (((u.double() @ self.u) * self.s).to(self.v.dtype) @ self.v.T).double()


class DenseJacobian:
    """An assembled (N, P) Jacobian behind the same jvp / vjp interface."""

    def __init__(self, matrix: Tensor) -> None:
        self.matrix = matrix

    def jvp(self, v: Tensor) -> Tensor:
        return v.to(self.matrix.dtype) @ self.matrix.T

    def vjp(self, u: Tensor) -> Tensor:
        return u.to(self.matrix.dtype) @ self.matrix
