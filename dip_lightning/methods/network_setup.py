"""How a method builds its network and the network's fixed input, each from a seed alone.

Mixed into :class:`~dip_lightning.methods.base.DeepImagePrior`; subclasses add layers or dropout
(:meth:`NetworkSetup.network_kwargs`) or re-draw weights (:meth:`NetworkSetup.initialise_network`).
A replicated run calls both once per replicate seed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dip_lightning.methods.network_input import make_network_input


class NetworkSetup:
    """Builds the network and its input from the method's ``net_factory``, ``input_settings``,
    ``likelihood`` and ``problem``."""

    trains_input: ClassVar[bool] = False
    """Whether the network input z is fitted with the network (a parameter, as in the Deep Random
    Projector) rather than held fixed (a buffer). Either way it is saved as ``net_input``."""

    @property
    def uses_log_precision(self) -> bool:
        return self.likelihood == "nll"

    def network_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for the network factory; subclasses add layers or dropout."""
        return {"log_precision_channel": self.uses_log_precision}

    def build_input(self, seed: int) -> Tensor:
        """The fixed network input z (1, C, H, W) of a run with ``seed``."""
        problem, settings = self.problem, self.input_settings
        pseudo_inverse = None
        if settings["kind"] == "pseudo_inverse":
            pseudo_inverse = problem.operator.pseudo_inverse(problem.observation).detach()
        return make_network_input(
            settings["kind"],
            int(settings["channels"]),
            problem.image_shape,
            float(settings["scale"]),
            seed,
            pseudo_inverse,
        )

    def register_input(self, z: Tensor) -> None:
        """Hold z as ``net_input``: a parameter when the method fits it, a buffer otherwise."""
        if self.trains_input:
            self.net_input = nn.Parameter(z)
        else:
            self.register_buffer("net_input", z)

    def build_network(self, seed: int) -> nn.Module:
        """A freshly initialised network whose weights depend on ``seed`` alone.

        The initialisation draws from its own seeded stream, not from whatever the global
        generator holds after the data and operator were built, so a run's network is the same
        however it was set up (and replicate k of a replicated run is the network of seed k).
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = self.net_factory(
                in_channels=int(self.input_settings["channels"]),
                out_channels=self.problem.channels,
                **self.network_kwargs(),
            )
            self.initialise_network(net)
        return net

    def initialise_network(self, net: nn.Module) -> None:
        """Re-draw weights after construction (MC dropout's N(0, std) init); nothing by default."""
