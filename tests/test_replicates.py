"""Replicated runs (``method.replicates=K``): replicate k is the run with seed ``seed + k``.

The comparison runs in float64 (``trainer.precision=64-true``). On a CPU the replicated
convolutions run group by group and even float32 agrees bit for bit, but cuDNN's grouped kernels
round differently from single ones, and in float32 Adam's first steps blow rounding-level
differences in near-zero gradients (biases in front of a batch norm) up to the learning rate. In
float64 the replicate and the separate run agree to 1e-9 on any device.
"""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from dip_lightning.config import build, compose_config
from dip_lightning.data.datamodule import SingleObservationDataModule
from dip_lightning.errors import ConfigError
from dip_lightning.job.run import build_method, build_problem, run
from dip_lightning.methods.dip import DIP
from dip_lightning.methods.mcdropout import MCDropoutDIP
from dip_lightning.models.bayesian import mean_field_conv_factory
from dip_lightning.models.layers import per_sample_norm
from dip_lightning.models.replicated import ReplicaNoise, replica_state_dict, replicate_network
from dip_lightning.models.skip import SkipNet

STEPS = 8
FLOAT64 = ("trainer.precision=64-true", "data.size=32", "method.num_samples=2")
# Replicates train to the step budget; plain DIP's default early stopping is switched off.
FIXED = "stopping=fixed"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fit(cfg, steps: int = STEPS):
    pl.seed_everything(int(cfg.seed), verbose=False)
    method = build_method(cfg, build_problem(cfg))
    trainer = build(cfg.trainer, max_steps=steps, logger=False, callbacks=[], limit_val_batches=0)
    trainer.fit(method, datamodule=SingleObservationDataModule())
    return method


@pytest.mark.long
@pytest.mark.parametrize(
    ("method", "task"), [("dip", "denoising"), ("mfvi", "super_resolution"), ("mfvi", "denoising")]
)
def test_replicate_k_matches_a_separate_run_with_seed_k(small_config, method, task):
    common = (f"method={method}", f"task={task}", FIXED, *FLOAT64)
    replicated = fit(small_config(*common, "seed=5", "method.replicates=3"))
    assert replicated.replicas is not None and replicated.replicas.seeds == [5, 6, 7]
    ours_record = replicated.trajectory
    for k in range(3):
        single = fit(small_config(*common, f"seed={5 + k}"))
        theirs, ours = single.net.state_dict(), replica_state_dict(replicated.net, k)
        assert ours.keys() == theirs.keys()
        for name, value in theirs.items():
            torch.testing.assert_close(ours[name], value, rtol=0, atol=1e-9, msg=name)
        torch.testing.assert_close(
            ours_record.replica_ema.value[k : k + 1], single.trajectory.ema.value, rtol=0, atol=1e-9
        )
        history = torch.stack(ours_record.replica_psnr_history)[:, k]
        expected = torch.stack(single.trajectory.psnr_history).to(history)
        torch.testing.assert_close(history, expected, atol=1e-6, rtol=0)


def test_replicated_network_runs_every_replicate_on_its_own_block():
    conv = mean_field_conv_factory(0.0, 0.1)
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(SkipNet(8, 1, [8, 8], [8, 8], [2, 2], conv=conv).double())
    noise = ReplicaNoise([10, 11, 12])
    stacked = replicate_network(nets, noise)
    z = torch.rand(3 * 4, 8, 16, 16, dtype=torch.float64)  # 4 Monte Carlo samples per replicate
    with per_sample_norm(stacked):
        out = stacked(z).unflatten(0, (3, 4))
    for k, net in enumerate(nets):
        torch.manual_seed(10 + k)  # what the replicate's stream holds
        with per_sample_norm(net):
            expected = net(z[4 * k : 4 * (k + 1)])
        torch.testing.assert_close(out[k], expected, rtol=0, atol=1e-10)
        assert replica_state_dict(stacked, k).keys() == net.state_dict().keys()


def test_replicates_one_is_the_plain_method(small_config):
    method = build_method(small_config("method.replicates=1"), build_problem(small_config()))
    assert type(method) is DIP and method.replicates == 1 and method.replicas is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("method.replicates=0",), "integer >= 1"),
        (("method.replicates=two",), "integer >= 1"),
        (("method=mcdropout", "method.replicates=2"), "MCDropoutDIP cannot train replicates"),
        (("method=sgld", "method.replicates=2"), "SGLDDIP cannot train replicates"),
        (("stopping=wmv", "method.replicates=2"), "use stopping=fixed"),
        (("method=mfvi", "stopping=oracle", "method.replicates=2"), r"early stopping \(oracle\)"),
        ((FIXED, "method.grad_clip=1.0", "method.replicates=2"), "grad_clip=0"),
    ],
)
def test_replicates_settings_are_checked_before_training(small_config, overrides, message):
    cfg = small_config(*overrides)
    with pytest.raises(ConfigError, match=message) as error:
        build_method(cfg, build_problem(cfg))
    assert "method.replicates" in str(error.value)


def test_a_method_opts_into_replicates_with_its_class_attribute():
    assert DIP.supports_replicates and not MCDropoutDIP.supports_replicates
    method = DIP(net=lambda **_: nn.Identity(), optimizer=torch.optim.Adam, seed=3, replicates=2)
    assert method.replicas is not None and method.replicas.seeds == [3, 4]
    with pytest.raises(ConfigError, match=r"method\.replicates.*supports_replicates"):
        MCDropoutDIP(net=lambda **_: nn.Identity(), optimizer=torch.optim.Adam, replicates=2)


@pytest.mark.long
def test_replicated_run_reports_each_replicate_and_their_spread(small_config, tmp_path, capsys):
    cfg = small_config(FIXED, "method.replicates=2", "data.size=32", "trainer.max_steps=6")
    run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["replicates"] == 2 and [r["seed"] for r in metrics["per_replicate"]] == [0, 1]
    psnrs = [r["psnr"] for r in metrics["per_replicate"]]
    assert metrics["psnr_replicate_mean"] == pytest.approx(sum(psnrs) / 2)
    assert metrics["psnr_replicate_std"] == pytest.approx(abs(psnrs[0] - psnrs[1]) / 2**0.5)
    assert metrics["mean_replicate_std_map"] > 0 and "uce_replicates" in metrics
    variance = torch.from_numpy(__import__("numpy").load(tmp_path / "variance_replicates.npy"))
    assert variance.shape == (1, 32, 32) and float(variance.min()) >= 0
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert len(curves["psnr_replicates"]) == 2 and len(curves["psnr_replicates"][0]) == 6
    assert "2 replicates: PSNR" in capsys.readouterr().out


@pytest.mark.long
def test_a_resumed_replicated_run_continues_exactly(tmp_path):
    common = ("preset=small", "logger=none", "method=mfvi", "method.replicates=2", *FLOAT64[1:])

    def job(name: str, *overrides: str) -> tuple[dict, dict]:
        run(compose_config([*common, *overrides], tmp_path / name))
        read = lambda file: json.loads((tmp_path / name / file).read_text())  # noqa: E731
        return read("metrics.json"), read("curves.json")

    full, full_curves = job("full", "trainer.max_steps=8")
    job("half", "trainer.max_steps=4")
    resumed, resumed_curves = job("resumed", "trainer.max_steps=8", f"ckpt_path={tmp_path / 'half'}")
    with pytest.raises(ConfigError, match="holds 2 replicates") as refused:
        job("three", "trainer.max_steps=8", "method.replicates=3", f"ckpt_path={tmp_path / 'half'}")
    assert refused.value.setting == "method.replicates"
    for ours, theirs in zip(resumed_curves["psnr_replicates"], full_curves["psnr_replicates"], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-6)
    for ours, theirs in zip(resumed["per_replicate"], full["per_replicate"]):
        assert ours["psnr"] == pytest.approx(theirs["psnr"], rel=1e-6)
    assert resumed["psnr"] == pytest.approx(full["psnr"], rel=1e-6)
