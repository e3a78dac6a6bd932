"""The optimiser's parameter groups and the learning-rate schedules every method shares.

Parameter groups: the image network's parameters form the first group, at the method's optimiser
settings; an operator fitted with the image adds the groups it declares
(:meth:`~dip_lightning.physics.base.ForwardOperator.optimizer_groups`), which may carry their own
learning rate (SelfDeblur's kernel generator learns at 1e-4 beside the image network's 1e-2).

Schedules (``method.lr_schedule``), all stepped once per training step and acting on every group:

* ``constant``: the DIP papers.
* ``cosine``: from the configured rate to zero over ``trainer.max_steps``.
* ``multistep``: the rate is multiplied by ``lr_gamma`` at each of ``lr_milestones``, given as
  fractions of ``trainer.max_steps`` so that a shorter run keeps the shape of the schedule
  (SelfDeblur: halved at steps 2000, 3000 and 4000 of 5000, i.e. 0.4, 0.6, 0.8).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dip_lightning.errors import ConfigError, check_choice, check_positive

__all__ = ["LR_SCHEDULES", "LrSchedule", "OptimizerFactory", "check_optimizer", "parameter_groups"]

LR_SCHEDULES = ("constant", "cosine", "multistep")

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def check_optimizer(optimizer: OptimizerFactory) -> None:
    """Reject a negative or non-finite learning rate or weight decay before any network is built.

    torch only complains when the optimiser is created, inside ``trainer.fit``, with a message
    that does not name the setting.
    """
    keywords = getattr(optimizer, "keywords", None) if isinstance(optimizer, functools.partial) else None
    for name in ("lr", "weight_decay"):
        if keywords and keywords.get(name) is not None:
            check_positive(f"method.optimizer.{name}", keywords[name], allow_zero=True)


def parameter_groups(module: nn.Module, operator: nn.Module | None) -> Any:
    """The parameters of ``module`` for its optimiser: all of them for a fixed operator (one group,
    as before operators could be fitted), else the image's group followed by the operator's."""
    if operator is None:
        return module.parameters()
    groups = [dict(group) for group in operator.optimizer_groups()]
    fitted = {id(p) for group in groups for p in group["params"]}
    image = [p for p in module.parameters() if id(p) not in fitted]
    return [{"params": image}, *groups]


class LrSchedule:
    """A learning-rate schedule of :data:`LR_SCHEDULES`, checked when the method is built."""

    def __init__(self, kind: str = "constant", milestones: Sequence[float] = (), gamma: float = 0.5) -> None:
        self.kind = str(check_choice("method.lr_schedule", kind, LR_SCHEDULES))
        self.milestones = [float(m) for m in (milestones or ())]
        self.gamma = float(check_positive("method.lr_gamma", gamma))
        if self.kind == "multistep":
            if not self.milestones:
                raise ConfigError(
                    "method.lr_milestones", list(milestones or ()), "multistep needs milestones"
                )
            if any(not 0 < m < 1 for m in self.milestones) or self.milestones != sorted(self.milestones):
                raise ConfigError(
                    "method.lr_milestones",
                    self.milestones,
                    "must be increasing fractions of trainer.max_steps, each in (0, 1)",
                )

    def scheduler(self, optimizer: torch.optim.Optimizer, max_steps: int) -> Any:
        """The Lightning scheduler entry for ``optimizer``, or None for a constant rate."""
        if self.kind == "constant":
            return None
        if self.kind == "cosine":
            scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, max_steps))
        else:
            steps = sorted({max(1, round(m * max_steps)) for m in self.milestones})
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=self.gamma)
        return {"scheduler": scheduler, "interval": "step"}
