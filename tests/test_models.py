"""Tests of the networks: skip network shapes and settings, per-sample norm, mean-field layers."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dip_lightning.errors import ConfigError
from dip_lightning.models.bayesian import (
    MeanFieldConv2d,
    deterministic_conv_factory,
    kl_divergence,
    mean_field_conv_factory,
    set_sampling,
)
from dip_lightning.models.layers import SampleBatchNorm2d, init_normal_, per_sample_norm
from dip_lightning.models.skip import SkipNet

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def small_net(**kwargs: object) -> SkipNet:
    """A 3-scale, 8-channel network: 32x32 inputs, a few milliseconds per pass."""
    settings: dict[str, object] = {
        "in_channels": 4,
        "channels_down": [8, 8, 8],
        "channels_up": [8, 8, 8],
        "channels_skip": [2, 2, 2],
    }
    settings.update(kwargs)
    return SkipNet(**settings)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- SkipNet
@pytest.mark.parametrize(
    ("kwargs", "size", "channels"),
    [
        ({}, 32, 1),
        ({"out_channels": 3}, 32, 3),
        ({"log_precision_channel": True}, 32, 2),
        ({"out_channels": 3, "log_precision_channel": True}, 64, 4),
        ({"channels_skip": 0}, 32, 1),
        ({"channels_down": [8, 8], "channels_up": 8, "channels_skip": 1}, 16, 1),
        ({"upsample_mode": "nearest", "kernel_down": 5}, 48, 1),
        ({"upsample_mode": "bicubic", "norm": "instance", "activation": "elu"}, 32, 1),
        ({"downsample": "avg", "activation": "relu", "padding": "zeros"}, 32, 1),
        ({"downsample": "max", "activation": "silu", "padding": "replicate", "norm": "none"}, 32, 1),
    ],
)
def test_output_shapes(kwargs: dict[str, object], size: int, channels: int) -> None:
    net = small_net(**kwargs)
    z = torch.rand(2, 4, size, size)
    y = net(z)
    assert y.shape == (2, channels, size, size)
    assert net.total_out_channels == channels
    assert torch.isfinite(y).all()


def test_reference_net_shape_64() -> None:
    net = SkipNet()
    assert net.scales == 5 and net.size_multiple == 32 and net.min_size == 64
    with torch.no_grad():
        y = net(torch.rand(1, 32, 64, 64))
    assert y.shape == (1, 1, 64, 64)


def test_mfvi_inpainting_config() -> None:
    """6 scales, no skip, nearest upsampling, 5x5 down / 3x3 up kernels, RGB output."""
    net = SkipNet(
        in_channels=32,
        out_channels=3,
        channels_down=[16, 32, 64, 128, 128, 128],
        channels_up=[16, 32, 64, 128, 128, 128],
        channels_skip=0,
        kernel_down=5,
        kernel_up=3,
        upsample_mode="nearest",
    )
    assert net.size_multiple == 64
    assert net.min_size == 192  # the coarsest map must exceed the 5x5 conv's reflection padding of 2
    assert not any(isinstance(m, nn.Upsample) and m.mode != "nearest" for m in net.modules())
    with torch.no_grad():
        y = net(torch.rand(1, 32, 192, 192))
    assert y.shape == (1, 3, 192, 192)


def test_sigmoid_range_and_log_precision_unbounded() -> None:
    net = small_net(out_channels=2, log_precision_channel=True)
    with torch.no_grad():
        net.head.bias.fill_(10.0)
        y = net(torch.rand(1, 4, 32, 32))
    image, log_precision = net.split_output(y)
    assert image.shape == (1, 2, 32, 32) and log_precision is not None
    assert log_precision.shape == (1, 1, 32, 32)
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert log_precision.min() > 1.0  # not squashed by the sigmoid


def test_sigmoid_off_gives_unbounded_output() -> None:
    net = small_net(need_sigmoid=False)
    with torch.no_grad():
        net.head.bias.fill_(-10.0)
        y = net(torch.rand(1, 4, 32, 32))
    assert y.max() < 0.0
    assert net.split_output(y)[1] is None


def reference_parameter_count(in_ch: int = 32, out_ch: int = 1, ch: int = 128, skip: int = 4) -> int:
    """Parameters of the 5-scale reference network, counted layer by layer (3x3 convs, BN, bias)."""

    def conv(i: int, o: int, k: int) -> int:
        return i * o * k * k + o

    def bn(c: int) -> int:
        return 2 * c

    total = conv(ch, out_ch, 1)
    for scale in range(5):
        depth = in_ch if scale == 0 else ch
        total += conv(depth, skip, 1) + bn(skip)
        total += conv(depth, ch, 3) + bn(ch) + conv(ch, ch, 3) + bn(ch)
        total += bn(skip + ch) + conv(skip + ch, ch, 3) + bn(ch) + conv(ch, ch, 1) + bn(ch)
    return total


def test_reference_parameter_count() -> None:
    count = sum(p.numel() for p in SkipNet().parameters())
    assert count == reference_parameter_count() == 2_217_573
    assert 2_000_000 <= count <= 2_500_000


def test_scalar_channels_broadcast() -> None:
    net = SkipNet(in_channels=4, channels_down=[8, 16, 8], channels_up=6, channels_skip=2)
    assert net.channels_down == [8, 16, 8]
    assert net.channels_up == [6, 6, 6]
    assert net.channels_skip == [2, 2, 2]
    assert net.scales == 3


def test_tuple_and_float_integral_channels_accepted() -> None:
    net = SkipNet(in_channels=4, channels_down=(8.0, 8), channels_up=(8, 8), channels_skip=(0, 1))
    assert net.channels_down == [8, 8]
    assert net.channels_skip == [0, 1]


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"channels_up": [8, 8]}, "model.channels_up"),
        ({"channels_skip": [2, 2, 2, 2]}, "model.channels_skip"),
        ({"channels_down": 8, "channels_up": 8, "channels_skip": 2}, "model.channels_down"),
        ({"channels_down": [], "channels_up": [], "channels_skip": []}, "model.channels_down"),
        ({"channels_down": "888"}, "model.channels_down"),
        ({"channels_down": [8, 0, 8]}, "model.channels_down"),
        ({"channels_up": [8, 8.5, 8]}, "model.channels_up"),
        ({"channels_skip": [2, -1, 2]}, "model.channels_skip"),
        ({"in_channels": 0}, "model.in_channels"),
        ({"out_channels": 0}, "model.out_channels"),
        ({"kernel_down": 4}, "model.kernel_down"),
        ({"kernel_up": 0}, "model.kernel_up"),
        ({"kernel_skip": 2}, "model.kernel_skip"),
        ({"activation": "tanh"}, "model.activation"),
        ({"norm": "group"}, "model.norm"),
        ({"padding": "circular"}, "model.padding"),
        ({"upsample_mode": "trilinear"}, "model.upsample_mode"),
        ({"downsample": "lanczos2"}, "model.downsample"),
        ({"dropout_p": -0.1}, "model.dropout_p"),
        ({"dropout_p": 1.0}, "model.dropout_p"),
        ({"dropout_placement": "encoder_only"}, "model.dropout_placement"),
    ],
)
def test_bad_settings_raise_config_error(kwargs: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        small_net(**kwargs)
    assert info.value.setting == setting
    assert setting in str(info.value)


@pytest.mark.parametrize("size", [(48, 64), (64, 40), (32, 32)])
def test_bad_input_size_raises(size: tuple[int, int]) -> None:
    net = SkipNet(in_channels=2, channels_down=[4] * 5, channels_up=[4] * 5, channels_skip=[1] * 5)
    with pytest.raises(ConfigError, match="divisible by 32 and at least 64"):
        net(torch.rand(1, 2, *size))


def test_min_size_depends_on_padding_and_norm() -> None:
    assert small_net().min_size == 16
    assert small_net(padding="zeros").min_size == 16  # one pixel cannot be normalised
    assert small_net(padding="zeros", norm="none").min_size == 8
    assert small_net(kernel_down=7).min_size == 32
    assert small_net(kernel_up=7, padding="reflect").min_size == 16
    net = small_net(padding="zeros", norm="none")
    assert net(torch.rand(1, 4, 8, 8)).shape == (1, 1, 8, 8)


def test_network_is_picklable_and_copyable() -> None:
    net = small_net(conv=mean_field_conv_factory(0.0, 0.1))
    clone = pickle.loads(pickle.dumps(net))
    twin = copy.deepcopy(net)
    for other in (clone, twin):
        for a, b in zip(net.state_dict().values(), other.state_dict().values()):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------- dropout
def count_dropout(net: nn.Module) -> int:
    return sum(isinstance(m, nn.Dropout2d) for m in net.modules())


def test_dropout_placement_counts() -> None:
    assert count_dropout(small_net()) == 0
    assert count_dropout(small_net(dropout_p=0.3)) == 4 * 3  # two encoder + two decoder blocks per scale
    assert count_dropout(small_net(dropout_p=0.3, dropout_placement="decoder_only")) == 2 * 3
    net = small_net(dropout_p=0.3)
    assert all(not isinstance(m, nn.Dropout2d) for scale in _scales(net) for m in scale.skip.modules())


def _scales(net: SkipNet) -> list[nn.Module]:
    scales, scale = [], net.body
    while scale is not None:
        scales.append(scale)
        scale = scale.inner
    return scales


def test_dropout_net_is_random_in_train_mode_only() -> None:
    net = small_net(dropout_p=0.2)
    z = torch.rand(1, 4, 32, 32)
    net.train()
    with torch.no_grad():
        a, b = net(z), net(z)
    assert (a - b).abs().max() > 1e-4
    net.eval()
    with torch.no_grad():
        c, d = net(z), net(z)
    assert torch.equal(c, d)


# ----------------------------------------------------------------------- per-sample batch norm
def test_per_sample_norm_matches_batch_one_training() -> None:
    net = small_net()
    net.train()
    x, x2 = torch.rand(1, 4, 32, 32), torch.rand(1, 4, 32, 32)
    with torch.no_grad():
        single = net(x)
        bn = next(m for m in net.modules() if isinstance(m, SampleBatchNorm2d))
        stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
        with per_sample_norm(net):
            batched = net(torch.cat([x, x2, x]))
    assert torch.allclose(batched[0], single[0], atol=1e-5)
    assert torch.allclose(batched[2], single[0], atol=1e-5)
    assert (batched[1] - single[0]).abs().max() > 1e-3
    assert torch.equal(bn.running_mean, stats[0])
    assert torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])


def test_plain_batch_norm_mixes_samples() -> None:
    """Without the context manager the batch statistics are shared, which is why it exists."""
    net = small_net()
    x, x2 = torch.rand(1, 4, 32, 32), torch.rand(1, 4, 32, 32)
    with torch.no_grad():
        single = net(x)
        batched = net(torch.cat([x, x2, x]))
    assert (batched[0] - single[0]).abs().max() > 1e-4


def test_per_sample_norm_restores_flags_on_exit_and_error() -> None:
    net = small_net()
    layers = [m for m in net.modules() if isinstance(m, SampleBatchNorm2d)]
    assert layers and not any(m.per_sample for m in layers)
    layers[0].per_sample = True
    with per_sample_norm(net):
        assert all(m.per_sample for m in layers)
    assert layers[0].per_sample and not any(m.per_sample for m in layers[1:])
    with pytest.raises(RuntimeError), per_sample_norm(net):
        raise RuntimeError("boom")
    assert layers[0].per_sample and not any(m.per_sample for m in layers[1:])
    with per_sample_norm(net, enabled=False):
        assert not any(m.per_sample for m in layers)


def test_sample_batch_norm_eval_uses_running_stats() -> None:
    bn = SampleBatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(4.0)
    bn.eval()
    x = torch.rand(2, 3, 5, 5)
    assert torch.allclose(bn(x), (x - 1.0) / math.sqrt(4.0 + bn.eps), atol=1e-6)


# -------------------------------------------------------------------------------------- init
def test_init_normal_sets_conv_weight_std() -> None:
    net = SkipNet(in_channels=32, channels_down=[64], channels_up=[64], channels_skip=[4])
    init_normal_(net, 0.1)
    weights = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, nn.Conv2d)])
    assert abs(weights.std().item() - 0.1) < 0.005
    assert abs(weights.mean().item()) < 0.005
    layer = MeanFieldConv2d(32, 64, 3, mu_init_std=1.0)
    init_normal_(layer, 0.05)
    assert abs(layer.weight_mu.std().item() - 0.05) < 0.005


@pytest.mark.parametrize("std", [0.0, -0.1, float("nan")])
def test_init_normal_rejects_bad_std(std: float) -> None:
    with pytest.raises(ConfigError, match=r"model\.init_std"):
        init_normal_(nn.Conv2d(1, 1, 3), std)


# -------------------------------------------------------------------------- mean-field layers
def test_kl_matches_monte_carlo_estimate() -> None:
    layer = MeanFieldConv2d(2, 3, 3, prior_mu=0.05, prior_sigma=0.2, rho_init_mean=-2.0, rho_init_std=0.5)
    with torch.no_grad():
        exact = layer.kl().item()
        total = torch.zeros(20000, dtype=torch.float64)
        prior = torch.distributions.Normal(0.05, 0.2)
        for mu, rho in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)):
            q = torch.distributions.Normal(mu.double().flatten(), F.softplus(rho).double().flatten())
            w = q.sample((20000,))
            total += (q.log_prob(w) - prior.log_prob(w)).sum(dim=1)
    estimate = total.mean().item()
    assert exact > 1.0
    assert abs(estimate - exact) / exact < 0.02


def test_kl_zero_at_prior_and_positive_elsewhere() -> None:
    layer = MeanFieldConv2d(3, 4, 3, prior_mu=0.1, prior_sigma=0.3)
    rho = math.log(math.expm1(0.3))  # softplus(rho) = 0.3
    with torch.no_grad():
        for mu, r in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)):
            mu.fill_(0.1)
            r.fill_(rho)
    assert abs(layer.kl().item()) < 1e-4
    layer.set_prior(0.0, 0.3)
    assert layer.kl().item() > 0.1


def test_kl_stays_finite_for_tiny_posterior_std() -> None:
    layer = MeanFieldConv2d(1, 1, 3, rho_init_mean=-200.0, rho_init_std=0.0)
    kl = layer.kl()
    assert torch.isfinite(kl)
    assert kl.item() > 100.0  # each of 10 parameters pays about log(sp) + 200


@pytest.mark.parametrize(
    ("padding", "stride", "kernel"), [("reflect", 1, 3), ("zeros", 2, 5), ("replicate", 1, 1)]
)
def test_zero_posterior_std_reproduces_deterministic_conv(padding: str, stride: int, kernel: int) -> None:
    layer = MeanFieldConv2d(3, 5, kernel, stride, padding, rho_init_mean=-30.0, rho_init_std=0.0)
    conv = deterministic_conv_factory()(3, 5, kernel, stride, padding, True)
    with torch.no_grad():
        conv.weight.copy_(layer.weight_mu)
        conv.bias.copy_(layer.bias_mu)
        x = torch.randn(2, 3, 16, 16)
        expected = conv(x)
        sampled = layer(x)
    assert sampled.shape == expected.shape
    assert torch.allclose(sampled, expected, atol=1e-5)


def test_local_reparameterisation_moments() -> None:
    layer = MeanFieldConv2d(2, 3, 3, padding_mode="zeros", rho_init_mean=-1.0, rho_init_std=0.2)
    x = torch.randn(1, 2, 6, 6)
    n = 4000
    with torch.no_grad():
        samples = layer(x.expand(n, -1, -1, -1))
        padded = F.pad(x, (1, 1, 1, 1))
        mean = F.conv2d(padded, layer.weight_mu, layer.bias_mu)
        var = F.conv2d(padded.square(), layer.weight_sigma.square(), layer.bias_sigma.square())
    emp_mean, emp_var = samples.mean(0, keepdim=True), samples.var(0, keepdim=True)
    assert ((emp_mean - mean).abs() <= 5 * (var / n).sqrt()).all()
    assert ((emp_var / var - 1).abs() <= 5 * math.sqrt(2 / n)).all()


def test_batch_items_get_independent_noise() -> None:
    layer = MeanFieldConv2d(2, 4, 3)
    x = torch.randn(1, 2, 8, 8).repeat(2, 1, 1, 1)
    with torch.no_grad():
        sampled = layer(x)
        assert (sampled[0] - sampled[1]).abs().max() > 1e-3
        assert set_sampling(layer, False) == 1
        assert not layer.sample
        mean = layer(x)
        assert torch.equal(mean[0], mean[1])
        assert torch.equal(layer(x), mean)


def test_gradients_finite_at_zero_variance() -> None:
    layer = MeanFieldConv2d(2, 3, 3, padding_mode="zeros", bias=False)
    x = torch.zeros(1, 2, 6, 6, requires_grad=True)
    layer(x).sum().backward()
    grads = [x.grad, layer.weight_mu.grad, layer.weight_rho.grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert layer.bias_mu is None and layer.bias_sigma is None


def test_kl_has_gradients_for_all_parameters() -> None:
    layer = MeanFieldConv2d(2, 3, 3)
    layer.kl().backward()
    for p in layer.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_bayesian_skip_net() -> None:
    net = small_net(conv=mean_field_conv_factory(0.0, 0.1, rho_init_mean=-4.0))
    layers = [m for m in net.modules() if isinstance(m, MeanFieldConv2d)]
    assert not any(isinstance(m, nn.Conv2d) for m in net.modules())
    assert len(layers) == 3 * 5 + 1  # skip, two encoder and two decoder convs per scale, plus the head
    total = kl_divergence(net)
    assert torch.allclose(total, sum(m.kl() for m in layers))
    z = torch.rand(1, 4, 32, 32).repeat(2, 1, 1, 1)
    with torch.no_grad(), per_sample_norm(net):
        sampled = net(z)
        assert (sampled[0] - sampled[1]).abs().max() > 1e-4
        assert set_sampling(net, False) == len(layers)
        mean = net(z)
    assert torch.allclose(mean[0], mean[1], atol=1e-6)
    assert all(m.prior_sigma.item() == pytest.approx(0.1) for m in layers)


def test_kl_divergence_of_deterministic_net_is_zero() -> None:
    total = kl_divergence(small_net())
    assert total.shape == () and total.item() == 0.0
    assert kl_divergence(nn.ReLU()).item() == 0.0
    assert set_sampling(small_net(), True) == 0


def test_set_prior_changes_kl() -> None:
    layer = MeanFieldConv2d(2, 2, 3)
    before = layer.kl().item()
    layer.set_prior(0.0, 1.0)
    assert layer.prior_sigma.item() == 1.0
    assert layer.kl().item() != pytest.approx(before)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"prior_sigma": 0.0}, "prior.sigma"),
        ({"prior_sigma": -1.0}, "prior.sigma"),
        ({"prior_sigma": float("inf")}, "prior.sigma"),
        ({"prior_sigma": float("nan")}, "prior.sigma"),
        ({"prior_mu": float("nan")}, "prior.mu"),
        ({"mu_init_std": -0.1}, "method.mu_init_std"),
        ({"rho_init_std": -0.1}, "method.rho_init_std"),
        ({"rho_init_mean": float("inf")}, "method.rho_init_mean"),
        ({"kernel_size": 2}, "model.kernel_size"),
        ({"in_channels": 0}, "model.in_channels"),
        ({"stride": 0}, "model.stride"),
        ({"padding_mode": "circular"}, "model.padding"),
    ],
)
def test_mean_field_bad_settings(kwargs: dict[str, object], setting: str) -> None:
    settings: dict[str, object] = {"in_channels": 2, "out_channels": 2, "kernel_size": 3}
    settings.update(kwargs)
    with pytest.raises(ConfigError) as info:
        MeanFieldConv2d(**settings)  # type: ignore[arg-type]
    assert info.value.setting == setting


@pytest.mark.parametrize("sigma", [0.0, -0.5])
def test_set_prior_rejects_bad_sigma(sigma: float) -> None:
    layer = MeanFieldConv2d(1, 1, 3, prior_sigma=0.1)
    with pytest.raises(ConfigError, match=r"prior\.sigma"):
        layer.set_prior(0.0, sigma)
    assert layer.prior_sigma.item() == pytest.approx(0.1)


def test_factory_refuses_unknown_settings_and_its_layers_bad_values() -> None:
    with pytest.raises(ConfigError, match=r"method\.rho_init"):
        mean_field_conv_factory(0.0, 0.1, rho_init=-3.0)
    # The values are checked once, by each layer, as it is built.
    with pytest.raises(ConfigError, match=r"prior\.sigma"):
        mean_field_conv_factory(0.0, 0.0)(1, 1, 3, 1, "reflect", True)
    with pytest.raises(ConfigError, match=r"prior\.mu"):
        mean_field_conv_factory(float("inf"), 0.1)(1, 1, 3, 1, "reflect", True)
    with pytest.raises(ConfigError, match=r"method\.mu_init_std"):
        mean_field_conv_factory(0.0, 0.1, mu_init_std=-1.0)(1, 1, 3, 1, "reflect", True)
    with pytest.raises(ConfigError, match=r"model\.kernel_size"):
        deterministic_conv_factory()(1, 1, 4, 1, "reflect", True)
    with pytest.raises(ConfigError, match=r"model\.padding"):
        deterministic_conv_factory()(1, 1, 3, 1, "circular", True)


def test_factory_passes_prior_and_init() -> None:
    factory = mean_field_conv_factory(0.2, 0.5, rho_init_mean=-5.0, rho_init_std=0.0)
    layer = factory(3, 4, 3, 2, "zeros", False)
    assert isinstance(layer, MeanFieldConv2d)
    assert layer.prior_mu.item() == pytest.approx(0.2) and layer.prior_sigma.item() == pytest.approx(0.5)
    assert torch.allclose(layer.weight_rho, torch.full_like(layer.weight_rho, -5.0))
    assert layer.bias_mu is None and layer.stride == 2 and layer.padding_mode == "zeros"
    assert layer(torch.rand(1, 3, 8, 8)).shape == (1, 4, 4, 4)
