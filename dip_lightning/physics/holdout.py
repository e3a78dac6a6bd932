"""Held-out measurement elements: a tuning objective that needs no ground truth.

With ``validation_fraction: f``, a seeded random fraction f of the observed measurement elements
is hidden from the training loss (the method's data fidelity averages over the others only). The
network never fits the noise of the hidden elements, so their mean squared residual
``heldout_mse`` = mean over hidden i of ((A x)_i - y_i)^2 estimates the reconstruction error in
measurement space plus the noise variance: it is smallest for the hyperparameters that predict
unseen measurements best, which is what cross-validation tunes on real data.

The split depends on the seed only (the observation seed), so all trials of a sweep hide the
same elements and their ``heldout_mse`` values are comparable. Elements the operator does not
observe (the holes of inpainting, the unsampled k-space of the Fourier operator) are never chosen.

Complex measurements are split element by element (a complex entry is hidden whole, real and
imaginary part together), and their squared residual is |r|^2, the sum over both parts. The
operator is only evaluated under ``torch.no_grad()``, so operators with trainable parameters
neither build a graph here nor receive gradients from the score.

Example:
    >>> import torch
    >>> from dip_lightning.physics.identity import Identity
    >>> from dip_lightning.physics.noise import GaussianNoise
    >>> from dip_lightning.physics.observation import make_observation
    >>> problem = hold_out(make_observation(torch.rand(1, 20, 20), Identity(), GaussianNoise(0.1), seed=0), 0.1, seed=0)
    >>> int((problem.train_mask == 0).sum())
    40
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from dip_lightning.errors import check_in_range
from dip_lightning.physics.observation import InverseProblem

__all__ = ["heldout_mask", "heldout_mse", "hold_out", "observed_elements"]


def observed_elements(problem: InverseProblem) -> Tensor:
    """True where the measurement depends on the image (all elements if the operator cannot say).

    A bool tensor of the observation's shape, also for a complex observation.
    """
    observation = problem.observation
    try:
        ones = torch.ones(1, problem.channels, *problem.image_shape, device=observation.device)
        with torch.no_grad():
            variance = problem.operator.propagate_variance(ones)
        observed = (variance.abs() if variance.is_complex() else variance) > 0
        if observed.shape == observation.shape:
            return observed
    except NotImplementedError:
        pass
    return torch.ones(observation.shape, dtype=torch.bool, device=observation.device)


def hold_out(problem: InverseProblem, fraction: float, seed: int) -> InverseProblem:
    """A copy of ``problem`` whose ``train_mask`` hides ``fraction`` of the observed elements.

    ``fraction`` 0 returns the problem unchanged. The number hidden is exact
    (round(fraction * observed), at least one).
    """
    fraction = float(check_in_range("validation_fraction", float(fraction), 0.0, 1.0))
    if fraction == 0.0:
        return problem
    observed = observed_elements(problem)
    count = int(observed.sum())
    hidden = max(1, round(fraction * count))
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    scores = torch.rand(observed.shape, generator=generator).to(observed.device)
    scores = scores.masked_fill(~observed, float("inf"))
    order = scores.flatten().argsort()[:hidden]
    train_mask = torch.ones(observed.numel(), dtype=torch.bool, device=observed.device)
    train_mask[order] = False
    return dataclasses.replace(problem, train_mask=train_mask.view(observed.shape))


def heldout_mask(problem: InverseProblem) -> Tensor | None:
    """True on the held-out elements, or None when nothing is held out."""
    return None if problem.train_mask is None else ~problem.train_mask.bool()


def heldout_mse(problem: InverseProblem, image: Tensor) -> float:
    """Mean squared residual |(A x)_i - y_i|^2 over the held-out elements of ``problem``.

    For complex elements |r|^2 = Re(r)^2 + Im(r)^2, so white complex noise of std s per part
    contributes 2 s^2.
    """
    hidden = heldout_mask(problem)
    if hidden is None:
        raise ValueError("the problem holds nothing out (validation_fraction is 0)")
    with torch.no_grad():
        residual = problem.operator(image.to(problem.observation.device)) - problem.observation
        return float(residual.abs().pow(2)[hidden.expand_as(residual)].mean())
