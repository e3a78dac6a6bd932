"""Krylov solvers on batches of vectors: conjugate gradients and Lanczos quadrature.

Both take the matrix as a callable on tensors (B, ...) and treat every batch item as its own
vector, so one call solves the posterior mean and all Monte Carlo samples at once and runs all
log-determinant probes together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CGResult", "Lanczos", "conjugate_gradient"]

MatVec = Callable[[Tensor], Tensor]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1)


def _per_item(values: Tensor, like: Tensor) -> Tensor:
    return values.view(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class CGResult:
    """Solution, iterations run, whether every item reached the tolerance, worst relative residual."""

    solution: Tensor
    iterations: int
    converged: bool
    relative_residual: float


def conjugate_gradient(
    apply: MatVec, rhs: Tensor, tol: float = 1e-6, max_iter: int = 1000, precondition: MatVec | None = None
) -> CGResult:
    """Solve A x = rhs for a symmetric positive definite A, item by item over the batch dimension.

    ``precondition`` applies an SPD approximation of A^-1 (preconditioned CG). Stops when every
    item's residual is at most ``tol`` times its right-hand side (zero right-hand sides are solved
    by zero) or after ``max_iter`` iterations; items that have converged stop moving. The residual
    is recomputed from scratch at the end, so the reported value is honest.
    """
    precondition = precondition if precondition is not None else (lambda v: v)
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    z = precondition(r)
    p = z.clone()
    norm_b = _dot(rhs, rhs).sqrt()
    rz = _dot(r, z)
    done = _dot(r, r).sqrt() <= tol * norm_b
    iterations = 0
    while not bool(done.all()) and iterations < max_iter:
        ap = apply(p)
        step = torch.where(done, torch.zeros_like(rz), rz / _dot(p, ap).clamp_min(1e-300))
        x = x + _per_item(step, x) * p
        r = r - _per_item(step, r) * ap
        z = precondition(r)
        rz_new = _dot(r, z)
        ratio = torch.where(done, torch.zeros_like(rz), rz_new / rz.clamp_min(1e-300))
        p = z + _per_item(ratio, p) * p
        rz = rz_new
        iterations += 1
        done = done | (_dot(r, r).sqrt() <= tol * norm_b)
    final = rhs - apply(x)
    residual = (_dot(final, final).sqrt() / norm_b.clamp_min(1e-300)).max()
    return CGResult(x, iterations, bool(residual <= 10 * tol), float(residual))


class Lanczos:
    """Lanczos tridiagonalisation with full reorthogonalisation, started from a batch of vectors.

    After k steps, the eigenvalues t_j of the k x k tridiagonal matrix T and the squared first
    components u_j of its eigenvectors give Gauss quadrature for quadratic forms:
    v^T f(A) v ~ |v|² sum_j u_j f(t_j), which is how the marginal likelihood is evaluated for many
    noise levels from one run (stochastic Lanczos quadrature with random probes v for log det A).
    An item whose Krylov space is exhausted stops growing.
    """

    def __init__(self, apply: MatVec, start: Tensor) -> None:
        self.apply = apply
        self.shape = start.shape
        self.norms = _dot(start, start).sqrt()
        first = (start / _per_item(self.norms.clamp_min(1e-300), start)).reshape(start.shape[0], 1, -1)
        self._basis = first  # (B, capacity, n): row j of item b is its j-th Lanczos vector
        self._filled = 1
        self.alphas: list[Tensor] = []
        self.betas: list[Tensor] = []
        self.lengths = torch.zeros(start.shape[0], dtype=torch.long)
        self.active = self.norms > 0

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def _append(self, v: Tensor) -> None:
        if self._filled == self._basis.shape[1]:  # grow the storage geometrically
            self._basis = torch.cat([self._basis, torch.empty_like(self._basis)], 1)
        self._basis[:, self._filled] = v
        self._filled += 1

    def extend(self, steps: int) -> None:
        """Run ``steps`` more Lanczos steps."""
        for _ in range(steps):
            if not bool(self.active.any()):
                return
            basis = self._basis[:, : self._filled]  # (B, k, n)
            v = basis[:, -1]
            w = self.apply(v.view(self.shape)).reshape(v.shape)
            alpha = (w * v).sum(1)
            w = w - alpha[:, None] * v
            if self.betas:
                w = w - self.betas[-1][:, None] * basis[:, -2]
            for _ in range(2):  # twice is enough to keep the basis orthogonal to working precision
                w = w - torch.bmm(basis.transpose(1, 2), torch.bmm(basis, w[..., None]))[..., 0]
            beta = w.norm(dim=1)
            self.alphas.append(torch.where(self.active, alpha, torch.zeros_like(alpha)))
            self.lengths += self.active.long()
            self.active = self.active & (beta > 1e-10 * alpha.abs().clamp_min(1e-300))
            beta = torch.where(self.active, beta, torch.zeros_like(beta))
            self.betas.append(beta)
            scaled = w / beta.clamp_min(1e-300)[:, None]
            self._append(torch.where(self.active[:, None], scaled, torch.zeros_like(w)))

    def _tridiagonal(self, item: int) -> Tensor:
        k = int(self.lengths[item])
        alpha = torch.stack([a[item] for a in self.alphas[:k]])
        beta = torch.stack([b[item] for b in self.betas[: k - 1]]) if k > 1 else alpha[:0]
        return torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)

    def quadrature(self, item: int) -> tuple[Tensor, Tensor]:
        """Nodes t_j and weights |v|² u_j of item ``item``'s Gauss quadrature."""
        if int(self.lengths[item]) == 0:
            empty = torch.zeros(0, dtype=self.norms.dtype)
            return empty, empty
        nodes, vectors = torch.linalg.eigh(self._tridiagonal(item))
        return nodes.clamp_min(0.0), self.norms[item] ** 2 * vectors[0].square()

    def shifted_residual(self, item: int, shift: float) -> float:
        """Relative residual of the Krylov (CG) solution of (A + shift I) x = v after these steps."""
        k = int(self.lengths[item])
        if k == 0 or not bool(self.active[item]):
            return 0.0
        nodes, vectors = torch.linalg.eigh(self._tridiagonal(item))
        last = (vectors[k - 1] * vectors[0] / (nodes + shift)).sum()
        return float(self.betas[k - 1][item] * last.abs())
