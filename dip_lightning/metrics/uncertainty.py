"""Calibration and likelihood metrics for Bayesian DIP (MC dropout, MFVI, SGLD).

A predictive variance is well calibrated when, among pixels predicted with variance v, the mean
squared error is also v. The uncertainty calibration error (UCE) measures the gap between the two,
averaged over equal-width variance bins and weighted by how many pixels fall in each bin.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dip_lightning.errors import check_in_range, check_int, check_positive
from dip_lightning.metrics.image import check_same_shape

__all__ = [
    "calibration_curve",
    "gaussian_nll",
    "heteroscedastic_nll",
    "predictive_moments",
    "uce",
]


def _check_bins(bins: int) -> int:
    """Bins must be a positive integer; a float or bool would silently change the edges."""
    return check_int("metrics.uce_bins", bins, 1)


def _binned_sums(error_sq: Tensor, variance: Tensor, bins: int) -> dict[str, Tensor]:
    """Per-bin pixel counts and sums of squared error and variance (float64), plus bin edges.

    Bins are equal-width in variance between its min and max, closed on the left; the last
    bin also holds the maximum. A constant variance puts every pixel in the first bin.
    """
    _check_bins(bins)
    check_same_shape(error_sq, variance, ("error_sq", "variance"))
    if variance.numel() == 0:
        raise ValueError("error_sq and variance must not be empty")
    err = error_sq.detach().reshape(-1).double()
    var = variance.detach().reshape(-1).double()
    lo, hi = var.min(), var.max()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64, device=var.device) * (hi - lo) + lo
    index = torch.bucketize(var, edges[1:-1], right=True)
    # With a constant variance all edges coincide; keep the single bin first (no host sync).
    index = torch.where(hi > lo, index, torch.zeros_like(index))
    zeros = torch.zeros(bins, dtype=torch.float64, device=var.device)
    return {
        "counts": zeros.scatter_add(0, index, torch.ones_like(var)),
        "sum_error": zeros.scatter_add(0, index, err),
        "sum_variance": zeros.scatter_add(0, index, var),
        "edges": edges,
    }


def _check_occupancy(min_occupancy: float) -> float:
    return float(check_in_range("calibration.min_occupancy", min_occupancy, 0.0, 1.0))


def _kept_bins(counts: Tensor, total: int, min_occupancy: float) -> Tensor:
    """Bins that enter the UCE: those holding more than ``min_occupancy`` of the elements.

    With 0 every occupied bin counts (empty bins contribute zero anyway). Toelle et al.'s
    evaluation left out bins with at most 2 % of the pixels, without renormalising the others.
    """
    return counts / total > _check_occupancy(min_occupancy)


def uce(error_sq: Tensor, variance: Tensor, bins: int = 15, min_occupancy: float = 0.0) -> Tensor:
    """Uncertainty calibration error: sum over bins of (|B_m|/N) |MSE(B_m) - mean var(B_m)|.

    Returned as a float64 0-d tensor. Because (|B_m|/N) times a difference of bin means is the
    difference of bin sums over N, empty bins contribute exactly zero without a division.
    A constant variance field gives a single occupied bin, i.e. |MSE - variance|. Bins holding
    at most ``min_occupancy`` of the elements are left out (see :func:`_kept_bins`).
    """
    sums = _binned_sums(error_sq, variance, bins)
    kept = _kept_bins(sums["counts"], error_sq.numel(), min_occupancy)
    gaps = (sums["sum_error"] - sums["sum_variance"]).abs()
    return torch.where(kept, gaps, torch.zeros_like(gaps)).sum() / error_sq.numel()


def calibration_curve(
    error_sq: Tensor, variance: Tensor, bins: int = 15, min_occupancy: float = 0.0
) -> dict[str, Tensor]:
    """Per-bin data for a calibration diagram (MSE against mean predicted variance).

    Keys: ``variance`` and ``mse`` (per-bin means, NaN for empty or left-out bins), ``counts``,
    ``edges`` (bins + 1 variance edges) and ``uce`` (0-d), all float64 tensors.
    """
    sums = _binned_sums(error_sq, variance, bins)
    counts = sums["counts"]
    kept = _kept_bins(counts, error_sq.numel(), min_occupancy) & (counts > 0)
    nan = torch.full_like(counts, math.nan)
    safe = counts.clamp_min(1.0)
    gaps = (sums["sum_error"] - sums["sum_variance"]).abs()
    return {
        "variance": torch.where(kept, sums["sum_variance"] / safe, nan),
        "mse": torch.where(kept, sums["sum_error"] / safe, nan),
        "counts": counts,
        "edges": sums["edges"],
        "uce": torch.where(kept, gaps, torch.zeros_like(gaps)).sum() / error_sq.numel(),
    }


def gaussian_nll(target: Tensor, mean: Tensor, variance: Tensor, eps: float = 1e-10) -> Tensor:
    """Mean over pixels of the Gaussian negative log-likelihood 0.5 (log 2 pi var + |t-m|^2 / var).

    The variance is floored at ``eps`` so a zero predicted variance gives a large finite value
    rather than inf/NaN.
    """
    check_same_shape(target, mean, ("target", "mean"))
    check_same_shape(target, variance, ("target", "variance"))
    check_positive("metrics.nll_eps", eps)
    var = variance.clamp_min(eps)
    return 0.5 * (torch.log(2.0 * math.pi * var) + (target - mean).abs().square() / var).mean()


def heteroscedastic_nll(target: Tensor, mean: Tensor, log_precision: Tensor, clamp: float = 20.0) -> Tensor:
    """Mean of exp(s) |t - mu|^2 - s with s = log precision clamped to [-clamp, clamp].

    This is the MC-dropout DIP training loss; it equals twice the Gaussian NLL with variance
    exp(-s), minus the constant log(2 pi). The clamp keeps exp(s) finite early in training.
    """
    check_same_shape(target, mean, ("target", "mean"))
    check_same_shape(target, log_precision, ("target", "log_precision"))
    check_positive("metrics.log_precision_clamp", clamp)
    s = log_precision.clamp(-clamp, clamp)
    return (torch.exp(s) * (target - mean).abs().square() - s).mean()


def predictive_moments(
    samples: Tensor, log_precisions: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Predictive mean, epistemic and aleatoric variance from T stochastic forward passes.

    ``samples`` has a leading sample axis (T, C, H, W). Epistemic variance is the population
    variance of the samples over T; aleatoric variance is the mean over T of exp(-s) for the
    predicted log precisions s, or zeros when the model predicts none.
    """
    if samples.ndim < 1 or samples.shape[0] < 1:
        raise ValueError(f"samples need a leading sample axis with T >= 1, got {tuple(samples.shape)}")
    mean = samples.mean(dim=0)
    epistemic = samples.var(dim=0, unbiased=False)
    if log_precisions is None:
        aleatoric = torch.zeros_like(mean)
    else:
        check_same_shape(samples, log_precisions, ("samples", "log_precisions"))
        aleatoric = torch.exp(-log_precisions).mean(dim=0)
    return mean, epistemic, aleatoric
