"""``method=gp`` through the job: the posterior as a method's result, its settings and its errors.

The regression itself is checked against dense linear algebra in tests/test_gp.py; here the
method must hand the platform the posterior of the problem it was attached to (mean, variance,
the measurement-space variance for calibration), take no training step, and refuse what it
cannot do before any work.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from dip_lightning.errors import ConfigError
from dip_lightning.gp.regression import GPSettings, posterior
from dip_lightning.job.run import build_method, build_problem, run
from dip_lightning.methods import gp as gp_module
from dip_lightning.methods.gp import GaussianProcessDIP, GPMeasurement
from dip_lightning.physics.identity import Identity
from dip_lightning.physics.noise import GaussianNoise
from dip_lightning.physics.observation import make_observation
from tests.conftest import run_cli
from tests.test_learned_operator import LearnedBlur

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ("method=gp", "data.size=32", "num_threads=1")


def attached(small_config, *overrides: str) -> GaussianProcessDIP:
    cfg = small_config(*SMALL, *overrides)
    pl.seed_everything(int(cfg.seed), verbose=False)
    method = build_method(cfg, build_problem(cfg))
    assert isinstance(method, GaussianProcessDIP)
    return method


def metrics_of(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def test_inpainting_variance_is_larger_in_the_holes_than_at_observed_pixels(small_config):
    method = attached(small_config, "task=inpainting")
    method.after_fit()
    prediction = method.predict_distribution()
    observed = method.problem.operator.mask.expand_as(prediction.epistemic) > 0
    variance = prediction.epistemic
    assert variance.shape == (1, 1, 32, 32)
    assert float(variance[~observed].min()) > float(variance[observed].max())
    assert float(variance[~observed].mean()) > 3 * float(variance[observed].mean())
    # Calibration against the observation: A is a mask, so Var(A x) is the variance where observed.
    torch.testing.assert_close(prediction.measurement_epistemic, variance * observed)


def test_the_method_reports_the_posterior_of_its_problem(small_config):
    method = attached(small_config, "task=denoising", "method.noise_std=0.1")
    settings = method.settings
    assert (settings.num_samples, settings.seed) == (4, 0)  # the shared method.num_samples, seed
    method.after_fit()
    problem = method.problem
    direct = posterior(method.gp_prior, problem.operator, problem.observation, 0.1, GPSettings())
    prediction = method.predict_distribution()
    torch.testing.assert_close(prediction.mean, direct.mean)
    torch.testing.assert_close(prediction.epistemic, direct.variance)
    assert float(prediction.aleatoric.abs().max()) == 0.0
    metrics = method.result_metrics()
    assert metrics["gp_noise_std"] == 0.1 and metrics["gp_noise_fitted"] is False
    assert metrics["gp_variance_method"] == "closed_form" and metrics["gp_prior_scale"] > 0


@pytest.mark.long
def test_the_kernel_follows_the_model_group(small_config):
    tiny = attached(small_config).gp_prior
    light = attached(small_config, "model=skip_light").gp_prior
    nearest = attached(small_config, "model.upsample_mode=nearest").gp_prior
    assert (tiny.multiple, light.multiple) == (8, 16)  # one halving per scale
    one = tiny.covariance((32, 32))
    assert not torch.allclose(one, light.covariance((32, 32)))
    assert not torch.allclose(one, nearest.covariance((32, 32)))


@pytest.mark.parametrize("task", ["super_resolution", pytest.param("ct", marks=pytest.mark.long)])
def test_operators_that_measure_elsewhere_get_sampled_measurement_variance(small_config, task):
    method = attached(small_config, f"task={task}", "method.num_samples=8")
    method.after_fit()
    prediction = method.predict_distribution()
    measurement = prediction.measurement_epistemic
    assert measurement.shape == method.problem.observation.shape
    assert bool(torch.isfinite(measurement).all()) and float(measurement.max()) > 0
    assert float(prediction.epistemic.min()) >= 0 and float(prediction.epistemic.max()) > 0


@pytest.mark.long
def test_complex_measurements_are_regressed_as_pairs_of_reals(small_config):
    method = attached(small_config, "operator=fourier")
    measured = GPMeasurement(method.problem)
    assert measured.is_complex and measured.observation.shape[-1] == 2
    # The realified operator is linear and its adjoint is the adjoint for the real inner product.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 32, 32, generator=generator)
    y = torch.randn(measured.observation.shape, generator=generator)
    assert float((measured.forward(x) * y).sum()) == pytest.approx(
        float((x * measured.adjoint(y)).sum()), rel=1e-4
    )
    method.after_fit()
    prediction = method.predict_distribution()
    truth = method.problem.ground_truth
    baseline = method.problem.operator.pseudo_inverse(method.problem.observation)
    assert float((prediction.mean - truth).square().mean()) < float((baseline - truth).square().mean())


def test_held_out_elements_are_left_out_of_the_regression(small_config):
    method = attached(small_config, "task=inpainting", "validation_fraction=0.3")
    problem = method.problem
    observed = GPMeasurement(problem).propagate_variance(torch.ones(1, 1, 32, 32))
    mask = problem.operator.mask.expand_as(observed)
    assert bool((observed[problem.train_mask == 0] == 0).all())
    assert int((observed > 0).sum()) == int((mask * problem.train_mask).sum()) > 0


@pytest.mark.heavy
def test_launch_runs_gp_with_no_step_and_writes_every_result_file(tmp_path):
    result = run_cli(["task=inpainting", "method=gp", "preset=small", "data.size=32", "logger=csv"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (metrics_file,) = tmp_path.glob("**/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 0
    assert metrics["criterion"] == "fixed" and metrics["reconstruction_source"] == "predictive_mean"
    for key in ("psnr", "ssim", "uce", "nll", "uce_observation", "gp_noise_std"):
        assert np.isfinite(metrics[key]), key
    folder = metrics_file.parent
    for name in (
        "reconstruction",
        "variance_epistemic",
        "calibration_ground_truth",
        "calibration_observation",
    ):
        assert (folder / f"{name}.png").is_file(), name
    assert not (folder / "checkpoints" / "last.ckpt").exists()  # nothing trained, nothing to resume


# ---------------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (("method.noise_std=0",), "method.noise_std"),
        (("method.noise_std=-0.1",), "method.noise_std"),
        (("method.variance=sometimes",), "method.variance"),
        (("method.prior_scale=0",), "method.prior_scale"),
        (("method.pad_factor=0",), "method.pad_factor"),
        (("method.num_samples=1",), "method.num_samples"),
        (("method.cg_tol=0",), "method.cg_tol"),
        (("method.likelihood=nll",), "method.likelihood"),
        (("method.reconstruction=ema",), "method.reconstruction"),
        (("method.input.kind=pseudo_inverse",), "method.input.kind"),
        (("method.input.scale=0",), "method.input.scale"),
        (("regulariser=tv",), "regulariser"),
        (("task=ct", "regulariser.weight=1e-3"), "regulariser"),
        (("stopping=wmv",), "stopping"),
        (("stopping=oracle",), "stopping"),
        (("+model.downsample=max",), "model.downsample"),
        (("operator._target_=tests.test_learned_operator.LearnedBlur",), "operator"),
        (("task=phase_retrieval",), "operator"),
    ],
)
def test_bad_settings_fail_before_any_work(small_config, tmp_path, overrides, setting):
    with pytest.raises(ConfigError) as info:
        run(small_config(*SMALL, *overrides))
    assert info.value.setting == setting, info.value
    assert not (tmp_path / "metrics.json").exists()


def test_an_image_size_the_kernel_cannot_take_names_the_model_setting(small_config):
    cfg = small_config(*SMALL)
    image = torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    problem = make_observation(image, Identity(image_shape=(20, 20)), GaussianNoise(0.1), seed=0)
    with pytest.raises(ConfigError, match="divisible by 8") as info:
        build_method(cfg, problem)
    assert info.value.setting == "model.channels_down"


def test_an_operator_fitted_with_the_image_is_refused(small_config):
    cfg = small_config(*SMALL)
    image = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    problem = make_observation(image, LearnedBlur((32, 32)), GaussianNoise(0.1), seed=0)
    assert any(isinstance(p, nn.Parameter) for p in problem.operator.parameters())
    with pytest.raises(ConfigError, match="fixed linear operator"):
        build_method(cfg, problem)


# ---------------------------------------------------------------------------------- the job
@pytest.mark.long
def test_a_run_takes_no_step_and_reports_the_fitted_hyperparameters(small_config):
    cfg = small_config(*SMALL, "task=super_resolution", "trainer.max_steps=50")
    run(cfg)
    metrics = metrics_of(cfg)
    assert metrics["status"] == "completed" and metrics["steps"] == 0
    assert metrics["gp_noise_fitted"] is True and metrics["gp_noise_std"] > 0
    assert metrics["gp_cg_converged"] is True and metrics["gp_variance_method"] == "exact"
    assert "peak_psnr" not in metrics and metrics["detected_step"] is None
    assert metrics["psnr"] > metrics["baseline_psnr"] - 3.0


def test_a_signal_during_the_posterior_reports_the_prior_mean(small_config, signal_handlers, monkeypatch):
    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        raise AssertionError("the signal should have ended the posterior")

    monkeypatch.setattr(gp_module, "posterior", interrupted)
    cfg = small_config(*SMALL)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    metrics = metrics_of(cfg)
    assert metrics["status"] == "interrupted" and "after training" in metrics["reason"]
    reconstruction = np.load(Path(cfg.paths.output_dir) / "reconstruction.npy")
    np.testing.assert_allclose(reconstruction, 0.5, atol=1e-6)  # the prior mean behind the sigmoid
    assert "uce" not in metrics  # no posterior, no uncertainty


@pytest.mark.long
def test_resuming_a_gp_run_says_there_is_no_checkpoint(small_config, tmp_path):
    cfg = small_config(*SMALL)
    run(cfg)
    with pytest.raises(ConfigError) as info:
        run(small_config(*SMALL, f"ckpt_path={tmp_path}"))
    assert info.value.setting == "ckpt_path" and "holds no" in str(info.value)
