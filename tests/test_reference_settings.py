"""Defaults that follow the reference implementations: where MC dropout sits in a block, the clipped
noisy observation, and each method's input perturbation on denoising."""

from __future__ import annotations

import pytest
from torch import nn

from dip_lightning.errors import ConfigError
from dip_lightning.job.run import build_method, build_problem
from dip_lightning.models.skip import SkipNet


def block_sequences(net: nn.Module) -> list[list[type]]:
    """The layer types of every Sequential of the network that holds a convolution."""
    sequences = []
    for module in net.modules():
        if isinstance(module, nn.Sequential):
            types = [type(m) for m in module]
            if any(issubclass(t, nn.Conv2d) for t in types):
                sequences.append(types)
    return sequences


def test_mc_dropout_follows_every_dropped_conv_directly_as_in_the_references(small_config) -> None:
    cfg = small_config("method=mcdropout")
    net = build_method(cfg, build_problem(cfg)).net
    layers = [m for m in net.modules() if not list(m.children())]
    dropouts = [i for i, m in enumerate(layers) if isinstance(m, nn.Dropout2d)]
    assert dropouts, "MC dropout must add dropout layers"
    for i in dropouts:
        # conv -> Dropout2d -> BatchNorm -> activation (Laves et al.'s conv(), Toelle et al.'s MCDropout)
        assert isinstance(layers[i - 1], nn.Conv2d), type(layers[i - 1])
        assert isinstance(layers[i + 1], nn.BatchNorm2d), type(layers[i + 1])


def test_dropout_after_the_activation_stays_available() -> None:
    net = SkipNet(1, 1, [8, 8], [8, 8], [2, 2], dropout_p=0.3, dropout_order="after_activation")
    for types in block_sequences(net):
        for i, t in enumerate(types):
            if t is nn.Dropout2d:
                assert types[i - 1] is nn.LeakyReLU
    with pytest.raises(ConfigError, match="method.dropout_order"):
        SkipNet(1, 1, [8], [8], [2], dropout_p=0.3, dropout_order="sideways")


def test_the_denoising_observation_is_clipped_to_the_unit_range_like_the_references(small_config) -> None:
    problem = build_problem(small_config("task=denoising"))
    assert float(problem.observation.min()) >= 0.0 and float(problem.observation.max()) <= 1.0
    unclipped = build_problem(small_config("task=denoising", "noise.clip=false"))
    assert float(unclipped.observation.min()) < 0.0 or float(unclipped.observation.max()) > 1.0


@pytest.mark.parametrize(
    ("method", "std"), [("dip", 0.0333), ("sgld", 0.0333), ("mcdropout", 0.1), ("mfvi", 0.1)]
)
def test_each_method_perturbs_its_input_as_its_own_denoising_reference(small_config, method, std) -> None:
    assert small_config("task=denoising", f"method={method}").method.input.perturbation_std == std
