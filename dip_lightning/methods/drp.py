"""Deep Random Projector (Li, Wang, Zhuang and Sun, CVPR 2023).

DIP is slow because it trains a deep network's weights. DRP keeps a shallow (one-scale) DIP
network at its random initialisation and fits only what is cheap and well conditioned: the input
seed z, a BatchNorm on z, and the affine parameters of the network's own normalisation layers.
Its loss is sqrt(MSE) plus lambda times the total variation of the output; with so few free
parameters and the TV term the fit plateaus instead of overfitting the noise.

The network is the ``model`` group's (kernel sizes, padding, upsampling, norm, activation)
reduced to the reference's one scale: ``method.network`` holds the channel lists that replace the
model's (per task, in ``conf/task_method/<task>_drp.yaml``); ``method.network=null`` keeps the
model's scales, frozen the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dip_lightning.errors import ConfigError, check_positive
from dip_lightning.methods.base import DeepImagePrior
from dip_lightning.models.layers import SampleBatchNorm2d

NORM_LAYERS = (nn.modules.batchnorm._NormBase,)
"""Layers whose affine parameters DRP trains (BatchNorm; InstanceNorm with ``affine``)."""


def mean_total_variation(image: Tensor) -> Tensor:
    """Anisotropic TV divided by the number of values (B C H W), the reference's normalisation.

    Unlike the ``regulariser`` group's sum, the mean makes DRP's weights (0.45, 0.75, 0.01)
    independent of the image size.
    """
    dh = (image[..., 1:, :] - image[..., :-1, :]).abs().sum()
    dw = (image[..., :, 1:] - image[..., :, :-1]).abs().sum()
    return (dh + dw) / image.numel()


class SeedNormalisedNetwork(nn.Module):
    """A BatchNorm on the network input, then the network: z -> net(BN(z)).

    The reference normalises the seed with its own ``BatchNorm2d`` whose affine parameters are
    trained; a :class:`SampleBatchNorm2d` here, so that batched evaluation samples get the
    statistics of a single pass like every other norm of the network.
    """

    def __init__(self, channels: int, net: nn.Module) -> None:
        super().__init__()
        self.seed_norm = SampleBatchNorm2d(channels)
        self.net = net

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.seed_norm(z))

    def __getattr__(self, name: str) -> Any:
        # Shape attributes of the wrapped network (size_multiple, split_output, ...) stay reachable.
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("net")
            if inner is None:
                raise
            return getattr(inner, name)


def freeze_all_but_norms(net: nn.Module) -> int:
    """Freeze every parameter of ``net`` outside its normalisation layers; return how many
    values stay trainable. The frozen weights keep their seeded random initialisation and are
    saved in checkpoints with the rest of the network."""
    trainable = set()
    for module in net.modules():
        if isinstance(module, NORM_LAYERS):
            trainable.update(id(p) for p in module.parameters(recurse=False))
    for p in net.parameters():
        p.requires_grad_(id(p) in trainable)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


class DRP(DeepImagePrior):
    """DIP with frozen random convolutions: Adam on z, the seed's BatchNorm and the BN affines.

    Args:
        network: settings passed to the network factory over the model's (the reference's one
            scale: ``channels_down: [64]``, ``channels_up: [64]``, ``channels_skip: [4]``).
        tv_weight: lambda of the TV term (:func:`mean_total_variation`); the reference's values
            are 0.45 (denoising), 0.75 (super-resolution x4) and 0.01 (inpainting). 0 drops it.
        **kwargs: the settings of :class:`DeepImagePrior`; ``likelihood`` must be ``mse`` (the
            loss is its square root) and the input is fitted, so ``input.perturbation_std`` is 0
            in the reference (a positive value is allowed and perturbs the fitted z).
    """

    trains_input = True

    def __init__(
        self,
        *args: Any,
        tv_weight: float = 0.45,
        network: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("reconstruction", "last")
        super().__init__(*args, **kwargs)
        if network is not None and not isinstance(network, Mapping):
            raise ConfigError(
                "method.network",
                network,
                "must be a mapping of network settings, or null (the model as it is)",
            )
        self.network = dict(network or {})
        if self.likelihood != "mse":
            raise ConfigError(
                "method.likelihood",
                self.likelihood,
                "DRP fits sqrt(MSE) through frozen weights and has no log-precision channel; use mse",
            )
        self.tv_weight = float(check_positive("method.tv_weight", tv_weight, allow_zero=True))
        if self.replicates > 1:
            raise ConfigError("method.replicates", self.replicates, "DRP trains one seed at a time; use 1")

    def network_kwargs(self) -> dict[str, Any]:
        """The model's settings with the one-scale channel lists of ``method.network``."""
        return {**super().network_kwargs(), **self.network}

    def build_network(self, seed: int) -> nn.Module:
        net = super().build_network(seed)
        if freeze_all_but_norms(net) == 0:
            raise ConfigError(
                "model.norm",
                getattr(net, "norm", None),
                "DRP trains the normalisation layers' affine parameters; the network has none "
                "(use model.norm=batch)",
            )
        return SeedNormalisedNetwork(int(self.input_settings["channels"]), net)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """One Adam over z, the seed norm and the BN affines (the reference's three Adams with
        one learning rate take the same steps: Adam's update is per parameter)."""
        return self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])

    def data_fidelity(self, image: Tensor, log_precision: Tensor | None) -> Tensor:
        """sqrt of the MSE through the operator, as in the reference."""
        return torch.sqrt(super().data_fidelity(image, log_precision))

    def output_loss(self, image: Tensor) -> Tensor | None:
        if self.tv_weight == 0:
            return None
        return self.tv_weight * mean_total_variation(image)
