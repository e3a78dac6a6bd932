"""Undo an update that made the fit to the measurement collapse (the DIP code's fallback).

At DIP's learning rates Adam now and then takes a step that throws the network far off: the
output's PSNR against the truth falls by 10 dB or more in one step and the run needs hundreds of
steps to climb back, while the output EMA, which the run reports, soaks up the bad images. The
original DIP code guards against this by watching the PSNR of the output against the *noisy
measurement* and, when it drops by more than 5 dB from one step to the next, restoring the weights
of the step before. This module watches the data-fidelity loss the same way (a PSNR drop of d dB
is the loss growing by a factor 10^(d/10)), using the measurement only, never the ground truth; it
also puts back the optimiser's state and halves the learning rate, for the reason given below.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

LR_BACKOFF = 0.5
"""Factor applied to every learning rate at each restore, for the rest of the run."""


def loss_ratio(drop_db: float) -> float:
    """The factor by which the data-fidelity loss grows when the PSNR against y drops ``drop_db``."""
    return 10.0 ** (drop_db / 10.0)


class Backtracking:
    """Keeps the weights and optimiser state of the last accepted step and returns to them.

    ``step`` is called once per step with the loss of the current weights, before the backward
    pass. After a collapse the step is taken again from the accepted point with the optimiser's
    state of that point and half the learning rate: retrying with the same rate and moments would
    repeat the same update (Adam's moments, fed the same gradient again, turn it into a full
    sign step, which collapses again), so the run could never get past it. Snapshots stay on the
    device (one copy of the weights and of the optimiser's per-weight state); the comparison reads
    one number from the device per step.
    """

    def __init__(self, drop_db: float) -> None:
        self.drop_db = float(drop_db)  # checked where the setting is read (DeepImagePrior)
        self.ratio = loss_ratio(self.drop_db)
        self.weights: list[Tensor] | None = None
        self.moments: list[dict[str, Any] | None] = []
        self.accepted_loss: float | None = None
        self.restores = 0

    def step(self, module: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor) -> bool:
        """Accept the current weights, or go back to the last accepted ones; True when restored.

        A loss above ``ratio`` times the last accepted loss (or a NaN) is a collapse.
        """
        value = float(loss)
        if self.accepted_loss is not None and not value <= self.ratio * self.accepted_loss:
            self.restore(module, optimizer)
            return True
        self.accept(module, optimizer, value)
        return False

    @torch.no_grad()
    def accept(self, module: nn.Module, optimizer: torch.optim.Optimizer, value: float) -> None:
        """Remember the current weights, optimiser state and loss as the point to return to."""
        params = list(module.parameters())
        if self.weights is None:
            self.weights = [p.detach().clone() for p in params]
        else:
            torch._foreach_copy_(self.weights, params)
        previous = self.moments if len(self.moments) == len(params) else [None] * len(params)
        self.moments = [_copy_state(optimizer.state.get(p), old) for p, old in zip(params, previous)]
        self.accepted_loss = value

    @torch.no_grad()
    def restore(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Put back the accepted weights and optimiser state, and lower the learning rates."""
        params = list(module.parameters())
        torch._foreach_copy_(params, self.weights)
        for p, saved in zip(params, self.moments):
            if saved is None:
                optimizer.state.pop(p, None)
            else:
                optimizer.state[p] = _copy_state(saved, optimizer.state.get(p))
        for group in optimizer.param_groups:
            group["lr"] *= LR_BACKOFF
        self.restores += 1


def _copy_state(state: dict[str, Any] | None, into: dict[str, Any] | None) -> dict[str, Any] | None:
    """A copy of one weight's optimiser state, reusing the tensors of ``into`` where they fit."""
    if not state:
        return None
    copy: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Tensor):
            target = None if into is None else into.get(key)
            if isinstance(target, Tensor) and target.shape == value.shape:
                copy[key] = target.copy_(value)
            else:
                copy[key] = value.clone()
        else:
            copy[key] = value
    return copy
