"""The Deep Random Projector: what it trains, its loss, its settings per task, resuming, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dip_lightning.config import compose_config
from dip_lightning.errors import ConfigError
from dip_lightning.job.run import run
from dip_lightning.methods.drp import DRP, mean_total_variation
from dip_lightning.methods.network_input import make_network_input
from dip_lightning.models.layers import SampleBatchNorm2d
from tests.test_methods import build_attached, fit
from tests.test_resume import BASE, assert_same_results, job, read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def conv_parameters(method: DRP) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().clone()
        for name, p in method.net.named_parameters()
        if not isinstance(method.net.get_submodule(name.rsplit(".", 1)[0]), nn.BatchNorm2d)
    }


def test_only_the_seed_its_norm_and_the_batchnorm_affines_train(small_config):
    method = build_attached(small_config("method=drp", "data.size=32"))
    trainable = {name for name, p in method.named_parameters() if p.requires_grad}
    assert "net_input" in trainable and "net.seed_norm.weight" in trainable
    for name, p in method.named_parameters():
        owner = method.get_submodule(name.rsplit(".", 1)[0]) if "." in name else method
        is_norm = isinstance(owner, nn.BatchNorm2d)
        assert p.requires_grad == (is_norm or name == "net_input"), name
    assert any(isinstance(m, nn.Conv2d) for m in method.net.modules())
    # One scale: a single stride-2 convolution in the network.
    strided = [m for m in method.net.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 1 and strided[0].out_channels == 64

    frozen = conv_parameters(method)
    z, norms = method.net_input.detach().clone(), method.net.seed_norm.weight.detach().clone()
    trained = fit(small_config("method=drp", "data.size=32"), steps=5)
    after = conv_parameters(trained)
    assert frozen.keys() == after.keys() and len(frozen) >= 10
    for name, value in frozen.items():
        assert torch.equal(value, after[name]), f"{name} changed in training"
    assert not torch.equal(z, trained.net_input.detach())
    assert not torch.equal(norms, trained.net.seed_norm.weight.detach())


def test_loss_is_root_mse_plus_the_mean_anisotropic_tv(small_config):
    method = build_attached(small_config("method=drp", "data.size=32", "method.tv_weight=0.3"))
    image = torch.rand(1, 1, 32, 32)
    dh = (image[..., 1:, :] - image[..., :-1, :]).abs().sum()
    dw = (image[..., :, 1:] - image[..., :, :-1]).abs().sum()
    assert float(mean_total_variation(image)) == pytest.approx(float((dh + dw) / 1024), rel=1e-6)
    assert float(method.output_loss(image)) == pytest.approx(0.3 * float((dh + dw) / 1024), rel=1e-6)
    problem = method.problem
    mse = (problem.operator(image) - problem.observation).pow(2).mean()
    assert float(method.data_fidelity(image, None)) == pytest.approx(float(mse.sqrt()), rel=1e-5)
    assert build_attached(small_config("method=drp", "method.tv_weight=0")).output_loss(image) is None


def test_the_seed_is_normal_with_std_0_1_and_its_norm_is_a_per_sample_batchnorm(small_config):
    method = build_attached(small_config("method=drp", "data.size=64"))
    z = method.net_input.detach()
    assert isinstance(method.net_input, nn.Parameter) and z.shape == (1, 1, 64, 64)
    assert float(z.mean()).__abs__() < 0.01 and float(z.std()) == pytest.approx(0.1, rel=0.05)
    assert isinstance(method.net.seed_norm, SampleBatchNorm2d)
    grid = make_network_input("meshgrid", 2, (4, 6), 1.0, 0)
    assert grid.shape == (1, 2, 4, 6)
    assert torch.equal(grid[0, 0, 0], torch.linspace(0, 1, 6)) and torch.equal(
        grid[0, 1, :, 0], torch.linspace(0, 1, 4)
    )


@pytest.mark.parametrize(
    ("task", "lr", "tv_weight", "channels", "skip", "seed"),
    [
        ("denoising", 0.1, 0.45, 64, 4, ("normal", 1)),
        ("super_resolution", 0.5, 0.75, 128, 4, ("normal", 1)),
        ("inpainting", 0.05, 0.01, 128, 128, ("meshgrid", 2)),
    ],
)
def test_task_defaults_are_the_references(small_config, task, lr, tv_weight, channels, skip, seed):
    cfg = small_config(f"task={task}", "method=drp")
    method = cfg.method
    assert (method.optimizer._target_, method.optimizer.lr, method.tv_weight) == (
        "torch.optim.Adam",
        lr,
        tv_weight,
    )
    assert (method.input.kind, method.input.channels) == seed
    assert method.input.perturbation_std == 0.0 and method.reconstruction == "last"
    assert list(method.network.channels_down) == [channels] and list(method.network.channels_skip) == [skip]
    assert cfg.stopping.criterion._target_.endswith("FixedSteps")


def test_ct_drops_the_dip_tv_regulariser_for_its_own(small_config):
    cfg = small_config("task=ct", "method=drp")
    assert cfg.regulariser.weight == 0.0
    assert cfg.method.tv_weight == 3.0 and cfg.method.optimizer.lr == 0.1


@pytest.mark.long
def test_a_stopped_run_resumes_with_the_saved_frozen_weights(tmp_path, signal_handlers):
    """The frozen convolutions and the fitted seed come from the checkpoint: resumed with another
    seed (which would draw other random weights), the run still ends where the uninterrupted one
    did."""
    overrides = ("method=drp", "data.size=32", "trainer.max_steps=16")
    full, _ = job(tmp_path, "full", *overrides)
    stopped = tmp_path / "stopped"
    signal_at = "+callbacks.signal={_target_:tests.interrupting.SignalAt,step:7}"
    with pytest.raises(KeyboardInterrupt):
        run(compose_config([*BASE, *overrides, signal_at], stopped))
    assert read_metrics(stopped)["status"] == "interrupted"
    resumed, metrics = job(tmp_path, "resumed", *overrides, "seed=5", f"ckpt_path={stopped}")
    assert metrics["status"] == "completed" and metrics["steps"] == 16
    assert_same_results(full, resumed)
    other_seed, _ = job(tmp_path, "other", *overrides, "seed=5")
    assert read_metrics(other_seed)["psnr"] != pytest.approx(read_metrics(full)["psnr"], rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (("method.likelihood=nll",), "method.likelihood"),
        (("method.tv_weight=-0.1",), "method.tv_weight"),
        (("method.optimizer.lr=-0.1",), "method.optimizer.lr"),
        (("model.norm=none",), "model.norm"),
        (("method.replicates=2",), "method.replicates"),
        (("method.network=5",), "method.network"),
        (("method.input.kind=meshgrid", "method.input.channels=3"), "method.input.channels"),
        (("method.input.kind=uniform",), "method.input.kind"),
        (("method.network.channels_down=[64,64]",), "model.channels"),
    ],
)
def test_bad_settings_fail_before_training(small_config, tmp_path, overrides, setting):
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        run(small_config("method=drp", "data.size=32", *overrides))
    assert not (tmp_path / "metrics.json").exists()


def test_network_null_keeps_the_models_scales_frozen(small_config):
    method = build_attached(small_config("method=drp", "method.network=null", "data.size=32"))
    assert method.net.scales == len(small_config().model.channels_down) > 1
    trainable = [n for n, p in method.net.named_parameters() if p.requires_grad]
    assert trainable and all("weight" in n or "bias" in n for n in trainable)
    assert not any(
        p.requires_grad for m in method.net.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()
    )
