"""Correctness of the Bayesian DIP methods (SGLD, MC dropout, MFVI) and their evaluation.

Every test can fail: the limits (zero posterior std, zero noise, zero dropout) must reproduce the
deterministic network exactly, the KL term must match a Monte Carlo estimate, and the T samples
of the predictive distribution must come from one forward call.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from dip_lightning.config import build
from dip_lightning.data.datamodule import SingleObservationDataModule
from dip_lightning.errors import ConfigError
from dip_lightning.job.run import build_method, build_problem, run
from dip_lightning.methods.backtracking import Backtracking, loss_ratio
from dip_lightning.methods.base import DeepImagePrior
from dip_lightning.methods.seeds import rank_seed
from dip_lightning.methods.sgld import SGLDDIP, add_langevin_noise, langevin_parameters
from dip_lightning.models.bayesian import MeanFieldConv2d
from dip_lightning.models.layers import SampleBatchNorm2d
from dip_lightning.priors import TotalVariation
from tests.conftest import config_options, edip_checkpoint

METHODS = config_options("method")
TASKS = config_options("task")
# The methods that report a predictive distribution (variance maps, calibration).
UNCERTAIN = ("sgld", "mcdropout", "mfvi")
assert set(UNCERTAIN) <= set(METHODS), f"UNCERTAIN names a method missing from conf/method: {UNCERTAIN}"
# The tasks of the MFVI-DIP comparison (conf/experiment/paper_<task>.yaml).
PAPER_TASKS = [name.removeprefix("paper_") for name in config_options("experiment")]
# Every method on every task; the quick loop runs one task per method (together every task), the
# other pairs are marked ``long``.
METHOD_TASK_PAIRS = [
    pytest.param(method, task, marks=() if task == TASKS[j % len(TASKS)] else pytest.mark.long)
    for j, method in enumerate(METHODS)
    for task in TASKS
]
# SGLD needs its burn-in inside a few-step run to have samples.
SHORT_SGLD = ("method.burn_in=1", "method.sample_every=1")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def method_overrides(method: str) -> list[str]:
    """``method=<method>`` and what a few-step run of it needs: SGLD's samples, educated DIP's
    pretrained network (built on first use)."""
    extra = {"sgld": SHORT_SGLD, "edip": (f"method.checkpoint={edip_checkpoint()}",)}
    return [f"method={method}", *extra.get(method, ())]


def build_attached(cfg) -> DeepImagePrior:
    pl.seed_everything(int(cfg.seed), verbose=False)
    return build_method(cfg, build_problem(cfg))


def fit(
    cfg, steps: int, validate_every: int | None = None, callbacks: list[pl.Callback] | None = None
) -> DeepImagePrior:
    """Train the method of ``cfg`` for ``steps`` steps without writing any output."""
    method = build_attached(cfg)
    trainer = build(
        cfg.trainer,
        max_steps=steps,
        logger=False,
        callbacks=callbacks or [],
        check_val_every_n_epoch=validate_every or 1,
        limit_val_batches=1.0 if validate_every else 0,
    )
    trainer.fit(method, datamodule=SingleObservationDataModule())
    return method


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------- every task
@pytest.mark.parametrize(("method", "task"), METHOD_TASK_PAIRS)
def test_each_method_runs_on_each_task_and_writes_its_maps(small_config, tmp_path, method, task):
    cfg = small_config(
        f"task={task}",
        *method_overrides(method),
        "trainer.max_steps=4",
        "trainer.check_val_every_n_epoch=2",
        "method.num_samples=3",
    )
    run(cfg)
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["status"] == "completed" and metrics["steps"] == 4
    assert math.isfinite(metrics["psnr"]) and 0 < metrics["ssim"] <= 1
    reconstruction = np.load(tmp_path / "reconstruction.npy")
    assert reconstruction.shape == (1, 64, 64) and np.isfinite(reconstruction).all()
    maps = ("variance_epistemic", "variance_aleatoric", "variance_total")
    if method not in UNCERTAIN:
        assert not any((tmp_path / f"{name}.npy").exists() for name in maps)
        assert "uce" not in metrics
        assert not any(key.startswith("test_loglik") for key in metrics)
        return
    for name in maps:
        assert (tmp_path / f"{name}.png").is_file()
        values = np.load(tmp_path / f"{name}.npy")
        assert values.shape == (1, 64, 64) and (values >= 0).all()
    epistemic = np.load(tmp_path / "variance_epistemic.npy")
    aleatoric = np.load(tmp_path / "variance_aleatoric.npy")
    total = np.load(tmp_path / "variance_total.npy")
    assert epistemic.max() > 0
    np.testing.assert_allclose(total, epistemic + aleatoric, rtol=1e-6)
    # Only a method trained with the NLL has a log-precision channel and an aleatoric variance;
    # MC dropout trains with the NLL where the measurement is the image's pixel grid.
    image_space = task in ("denoising", "inpainting")
    assert (aleatoric.max() > 0) == (method == "mcdropout" and image_space)
    for name in ("calibration_ground_truth", "calibration_observation"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    for key in ("uce", "uce_observation", "nll", "uce_laves", "uce_toelle", "uce_observation_toelle"):
        assert math.isfinite(metrics[key]), key
    for key in ("test_loglik_p1", "test_loglik_p2", "test_loglik_p10"):  # 64 px: no full covariance
        assert math.isfinite(metrics[key]), key
    assert "test_loglik_full" not in metrics
    validation = read_json(tmp_path / "curves.json")["validation"]
    assert validation["step"] == [2, 4]
    assert len(validation["psnr"]) == len(validation["uce"]) == 2


# ---------------------------------------------------------------------------------- evaluation
@pytest.mark.long
def test_validation_is_logged_every_n_steps_and_the_end_is_in_metrics(small_config, tmp_path):
    cfg = small_config(
        "method=mfvi",
        "logger=csv",
        "trainer.max_steps=6",
        "trainer.check_val_every_n_epoch=2",
        "method.num_samples=3",
    )
    run(cfg)
    (metrics_csv,) = tmp_path.glob("csv/**/metrics.csv")
    rows = list(csv.DictReader(metrics_csv.open()))
    val_steps = [int(row["step"]) for row in rows if row.get("val/psnr")]
    val_uce = [float(row["val/uce"]) for row in rows if row.get("val/uce")]
    # Validation ends epoch 2k-1, after 2k optimiser steps; Lightning logs it at step 2k - 1.
    assert val_steps == [1, 3, 5]
    assert len(val_uce) == 3 and all(v >= 0 for v in val_uce)
    curves = read_json(tmp_path / "curves.json")
    assert curves["validation"]["step"] == [2, 4, 6]
    assert len(curves["psnr"]) == 6
    metrics = read_json(tmp_path / "metrics.json")
    for key in ("psnr", "ssim", "uce", "uce_observation", "nll"):
        assert math.isfinite(metrics[key]), key
    final = [row for row in rows if row.get("final/psnr")]
    assert len(final) == 1 and float(final[0]["final/psnr"]) == pytest.approx(metrics["psnr"])


@pytest.mark.parametrize("method", ["mcdropout", "mfvi"])
def test_t_distinct_samples_come_from_one_forward_call(small_config, method):
    method_ = build_attached(small_config(f"method={method}", "method.num_samples=5"))
    calls = []
    handle = method_.net.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    norms = [m for m in method_.net.modules() if isinstance(m, SampleBatchNorm2d)]
    before = [(m.running_mean.clone(), m.num_batches_tracked.clone()) for m in norms]
    method_.net.train()
    try:
        images, _ = method_.sample_outputs(5)
        prediction = method_.predict_distribution()
    finally:
        handle.remove()
    assert calls == [5, 5], "each draw of T samples must be one batched forward call"
    flat = images.flatten(1)
    assert flat.shape[0] == 5
    distances = torch.cdist(flat, flat)
    assert (distances + torch.eye(5) > 1e-6).all(), "the T samples must differ"
    assert prediction.epistemic.min() > 0
    # Per-sample statistics: the batch norms' running statistics are not touched by sampling.
    for m, (mean, tracked) in zip(norms, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.num_batches_tracked, tracked)


def test_batched_samples_match_separate_single_passes(small_config):
    """Per-sample normalisation: sample t of a batch is what one pass with its noise gives."""
    method = build_attached(small_config("method=mfvi", "method.num_samples=3"))
    torch.manual_seed(7)
    batched, _ = method.sample_outputs(3)
    # With sampling off every item of the batch must equal the single deterministic pass.
    for layer in method.net.modules():
        if isinstance(layer, MeanFieldConv2d):
            layer.sample = False
    batch_mean, _ = method.sample_outputs(3)
    single, _ = method.sample_outputs(1)
    torch.testing.assert_close(batch_mean, single.expand_as(batch_mean), atol=1e-6, rtol=1e-5)
    assert (batched - batch_mean).abs().max() > 1e-4


# ---------------------------------------------------------------------------------- MFVI
def test_mfvi_with_zero_posterior_std_is_the_deterministic_dip(small_config):
    dip = build_attached(small_config("method=dip"))
    mfvi = build_attached(small_config("method=mfvi", "method.rho_init_mean=-60", "method.rho_init_std=0"))
    dip_convs = [m for m in dip.net.modules() if isinstance(m, nn.Conv2d)]
    mf_convs = [m for m in mfvi.net.modules() if isinstance(m, MeanFieldConv2d)]
    assert len(dip_convs) == len(mf_convs) > 0
    with torch.no_grad():
        for conv, layer in zip(dip_convs, mf_convs):
            conv.weight.copy_(layer.weight_mu)
            conv.bias.copy_(layer.bias_mu)
    torch.testing.assert_close(mfvi.net_input, dip.net_input)
    z = mfvi.net_input
    dip_image, _ = dip(z)
    mfvi_image, _ = mfvi(z)
    torch.testing.assert_close(mfvi_image, dip_image, atol=1e-5, rtol=1e-5)
    samples, _ = mfvi.sample_outputs(4)
    torch.testing.assert_close(samples, dip_image.detach().expand_as(samples), atol=1e-5, rtol=1e-5)
    assert mfvi.predict_distribution().epistemic.max() < 1e-10
    # The check has teeth: the published initialisation (std ~0.05) gives different outputs.
    noisy = build_attached(small_config("method=mfvi"))
    for target, source in zip(noisy.net.modules(), mfvi.net.modules()):
        if isinstance(target, MeanFieldConv2d):
            with torch.no_grad():
                target.weight_mu.copy_(source.weight_mu)
                target.bias_mu.copy_(source.bias_mu)
    assert (noisy.sample_outputs(1)[0] - dip_image).abs().max() > 1e-3


def test_mfvi_weight_prior_term_is_beta_times_the_kl_estimated_by_monte_carlo(small_config):
    beta, prior_mu, prior_sigma = 1e-3, 0.02, 0.1
    method = build_attached(
        small_config(
            "method=mfvi", f"method.kl_weight={beta}", f"prior.mu={prior_mu}", f"prior.sigma={prior_sigma}"
        )
    )
    closed_form = float(method.extra_loss().detach()) / beta
    generator = torch.Generator().manual_seed(0)
    draws = 256
    log_ratio = torch.zeros(draws, dtype=torch.float64)
    prior = torch.distributions.Normal(prior_mu, prior_sigma)
    for layer in method.net.modules():
        if not isinstance(layer, MeanFieldConv2d):
            continue
        for mu, rho in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)):
            mu = mu.detach().double()
            sigma = nn.functional.softplus(rho.detach().double())
            w = mu + sigma * torch.randn(draws, *mu.shape, generator=generator, dtype=torch.float64)
            posterior = torch.distributions.Normal(mu, sigma)
            log_ratio += (posterior.log_prob(w) - prior.log_prob(w)).flatten(1).sum(1)
    estimate = float(log_ratio.mean())
    standard_error = float(log_ratio.std()) / math.sqrt(draws)
    assert standard_error < 1e-3 * closed_form
    assert abs(estimate - closed_form) < 4 * standard_error, (estimate, closed_form, standard_error)


def test_prior_group_sets_the_mfvi_weight_prior_per_task(small_config):
    for task, sigma in (("denoising", 0.05), ("super_resolution", 0.1), ("inpainting", 0.36)):
        method = build_attached(small_config("method=mfvi", f"task={task}"))
        layers = [m for m in method.net.modules() if isinstance(m, MeanFieldConv2d)]
        assert method.prior_sigma == pytest.approx(sigma)
        assert all(float(m.prior_sigma) == pytest.approx(sigma) for m in layers)
    swept = build_attached(small_config("method=mfvi", "task=inpainting", "prior.sigma=0.2", "prior.mu=0.01"))
    assert (swept.prior_sigma, swept.prior_mu) == (0.2, 0.01)


# ---------------------------------------------------------------------------------- SGLD
def test_sgld_variance_is_exactly_zero_without_noise_and_steps(small_config):
    cfg = small_config(
        "method=sgld",
        "method.noise_scale=0",
        "method.optimizer.lr=0",
        "method.input.perturbation_std=0",
        "method.burn_in=2",
        "method.sample_every=2",
    )
    method = fit(cfg, steps=8)
    assert method.samples.count == 3  # steps 2, 4 and 6
    assert torch.count_nonzero(method.samples.variance) == 0
    assert torch.count_nonzero(method.predict_distribution().epistemic) == 0


def test_sgld_variance_is_positive_with_langevin_noise(small_config):
    cfg = small_config(
        "method=sgld", "method.input.perturbation_std=0", "method.burn_in=2", "method.sample_every=2"
    )
    method = fit(cfg, steps=8)
    assert method.samples.count == 3
    prediction = method.predict_distribution()
    assert (prediction.epistemic > 0).all()
    torch.testing.assert_close(prediction.mean, method.samples.mean.float())
    torch.testing.assert_close(prediction.epistemic, method.samples.variance.float())


def test_langevin_noise_has_std_noise_scale_times_lr_on_the_conv_weights(small_config):
    method = build_attached(small_config("method=sgld"))
    assert isinstance(method, SGLDDIP)
    convs = [m for m in method.net.modules() if isinstance(m, nn.Conv2d)]
    chosen = langevin_parameters(method.net, "conv_weights")
    assert [id(p) for p in chosen] == [id(m.weight) for m in convs]
    assert len(langevin_parameters(method.net, "all")) == len(list(method.net.parameters()))
    optimizer = method.configure_optimizers()
    assert method.noise_std(optimizer) == pytest.approx(2 * 0.01)
    zeros = [nn.Parameter(torch.zeros(200_000))]
    add_langevin_noise(zeros, 0.02, torch.Generator().manual_seed(0))
    assert float(zeros[0].std()) == pytest.approx(0.02, rel=0.01)
    assert abs(float(zeros[0].mean())) < 1e-3 * 0.02 * 10


def test_langevin_noise_is_the_same_on_every_rank(small_config):
    """Data-parallel replicas stay equal: the Langevin stream ignores the per-rank torch seed."""
    draws = []
    for rank in (0, 1):
        method = build_attached(small_config("method=sgld"))
        torch.manual_seed(rank_seed(0, rank))
        generator = method.langevin_generator(torch.device("cpu"))
        draws.append(torch.randn(10, generator=generator))
    torch.testing.assert_close(draws[0], draws[1])


# ---------------------------------------------------------------------------------- MC dropout
@pytest.mark.long
@pytest.mark.parametrize("order", ["before_norm", "after_activation"])
def test_mc_dropout_variance_is_zero_exactly_without_dropout(small_config, order):
    """Any rate > 0 spreads the samples and rate 0 gives none. With dropout at the end of a block
    the spread of the untrained network grows with the rate; before BatchNorm the normalisation
    rescales what dropout removed, so the spread need not be monotonic in the rate."""
    variances = []
    for p in (0.5, 0.2, 0.05, 0.0):
        method = build_attached(
            small_config(
                "method=mcdropout",
                f"method.dropout_p={p}",
                f"method.dropout_order={order}",
                "method.num_samples=32",
            )
        )
        torch.manual_seed(1)
        variances.append(float(method.predict_distribution().epistemic.mean()))
    assert variances[3] == 0.0 and min(variances[:3]) > 0, variances
    if order == "after_activation":
        assert variances[0] > variances[1] > variances[2], variances


def test_mc_dropout_network_has_dropout_after_convs_and_a_log_precision_channel(small_config):
    method = build_attached(small_config("method=mcdropout"))
    drops = [m for m in method.net.modules() if isinstance(m, nn.Dropout2d)]
    assert drops and all(m.p == pytest.approx(0.3) for m in drops)
    assert method.uses_log_precision and method.net.total_out_channels == 2
    # One dropout per conv block, except the skip branches and the output conv.
    convs = [m for m in method.net.modules() if isinstance(m, nn.Conv2d)]
    skips = [m.skip for m in method.net.modules() if getattr(m, "skip", None) is not None]
    assert skips and not any(isinstance(m, nn.Dropout2d) for skip in skips for m in skip.modules())
    assert len(drops) == len(convs) - len(skips) - 1
    weights = torch.cat([m.weight.flatten() for m in method.net.modules() if isinstance(m, nn.Conv2d)])
    assert float(weights.std()) == pytest.approx(0.1, rel=0.05)


# ---------------------------------------------------------------------------------- configs
def test_method_configs_match_the_reference_settings(small_config):
    sgld = small_config("method=sgld").method
    assert sgld.optimizer._target_ == "torch.optim.Adam"
    assert (sgld.optimizer.lr, sgld.optimizer.weight_decay) == (0.01, 5e-8)
    assert (sgld.noise_scale, sgld.noisy_parameters, sgld.burn_in, sgld.sample_every) == (
        2.0,
        "conv_weights",
        7000,
        50,
    )
    mcd = small_config("method=mcdropout", "method.num_samples=25").method
    assert mcd.optimizer._target_ == "torch.optim.AdamW"
    assert (mcd.optimizer.lr, mcd.optimizer.weight_decay) == (3e-4, 1e-4)
    assert (mcd.dropout_p, mcd.dropout_placement, mcd.weight_init_std) == (0.3, "after_conv", 0.1)
    assert (mcd.likelihood, mcd.log_precision_clamp, mcd.num_samples) == ("nll", 20.0, 25)
    mfvi = small_config("method=mfvi", "method.num_samples=25").method
    assert mfvi.optimizer._target_ == "torch.optim.AdamW"
    assert (mfvi.mu_init_std, mfvi.rho_init_mean, mfvi.rho_init_std) == (0.1, -3.0, 0.1)
    assert (mfvi.kl_weight, mfvi.prior_mu, mfvi.prior_sigma, mfvi.likelihood) == (1e-6, 0.0, 0.05, "mse")
    # The reference's AdamW(params, lr): PyTorch's default decay 0.01; 5e-3 on denoising, 3e-3 elsewhere.
    assert (mfvi.optimizer.lr, mfvi.optimizer.weight_decay) == (5e-3, 0.01)
    other = small_config("task=super_resolution", "method=mfvi").method.optimizer
    assert (other.lr, other.weight_decay) == (3e-3, 0.01)


@pytest.mark.parametrize("method", METHODS)
def test_tv_prior_combines_with_every_method(small_config, method):
    cfg = small_config(
        *method_overrides(method), "regulariser=tv", "regulariser.weight=1e-3", "method.num_samples=2"
    )
    built = fit(cfg, steps=2)
    assert isinstance(built.image_prior, TotalVariation) and built.image_prior.weight == 1e-3
    assert built.trainer.callback_metrics["train/image_prior"] > 0


def test_mfvi_nll_likelihood_trains_a_log_precision_channel(small_config):
    mse = build_attached(small_config("method=mfvi"))
    nll = fit(small_config("method=mfvi", "method.likelihood=nll", "method.num_samples=2"), steps=2)
    assert mse.net.total_out_channels == 1 and nll.net.total_out_channels == 2
    assert float(mse.predict_distribution().aleatoric.abs().max()) == 0.0
    assert float(nll.predict_distribution().aleatoric.min()) > 0.0


def test_rank_seeds_differ_per_rank_and_per_seed():
    seeds = {rank_seed(seed, rank) for seed in range(3) for rank in range(8)}
    assert len(seeds) == 24
    assert rank_seed(5, 0) == 5000


# ---------------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (("method=dip", "method.optimizer.lr=-0.01"), "method.optimizer.lr"),
        (("method=sgld", "method.optimizer.lr=-0.01"), "method.optimizer.lr"),
        (("method=mcdropout", "method.optimizer.lr=-3e-4"), "method.optimizer.lr"),
        (("method=mfvi", "method.optimizer.lr=-0.003"), "method.optimizer.lr"),
        (("method=mfvi", "method.optimizer.weight_decay=-1"), "method.optimizer.weight_decay"),
        (("method=mcdropout", "method.dropout_p=1.0"), "method.dropout_p"),
        (("method=mcdropout", "method.dropout_p=-0.1"), "method.dropout_p"),
        (("method=mcdropout", "method.dropout_placement=everywhere"), "method.dropout_placement"),
        (("method=mfvi", "prior.sigma=0"), "prior.sigma"),
        (("method=mfvi", "prior.sigma=-0.05"), "prior.sigma"),
        (("method=mfvi", "regulariser=tv", "prior.sigma=-1"), "prior.sigma"),
        (("method=mfvi", "method.kl_weight=-1e-6"), "method.kl_weight"),
        (("method=sgld", "method.noise_scale=-2"), "method.noise_scale"),
        (("method=sgld", "method.burn_in=-1"), "method.burn_in"),
        (("method=sgld", "method.sample_every=0"), "method.sample_every"),
        (("method=sgld", "method.noisy_parameters=biases"), "method.noisy_parameters"),
        (("method=mcdropout", "method.num_samples=0"), "method.num_samples"),
        (("method=dip", "method.lr_schedule=linear"), "method.lr_schedule"),
        (("method=dip", "method.lr_schedule=cosine", "trainer.max_steps=-1"), "method.lr_schedule"),
        (("method=dip", "method.backtrack_db=0"), "method.backtrack_db"),
        (("method=mfvi", "method.backtrack_db=-5"), "method.backtrack_db"),
    ],
)
def test_bad_hyperparameters_fail_before_training(small_config, tmp_path, overrides, setting):
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        run(small_config(*overrides))
    assert not (tmp_path / "metrics.json").exists()


def load_paper_table():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_table.py"
    spec = importlib.util.spec_from_file_location("paper_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_table_keeps_the_sgld_schedule_inside_short_runs():
    module = load_paper_table()
    assert module.sgld_schedule(50000) == (7000, 50)
    burn_in, sample_every = module.sgld_schedule(3000)
    assert burn_in < 3000 and (3000 - burn_in) // sample_every >= 200
    args = module.parse_args(["--steps", "40", "--image", "camera", "--steps-for", "sgld=100"])
    overrides = module.job_overrides("sgld", args)
    assert "trainer.max_steps=100" in overrides and "data=camera" in overrides
    assert "method.burn_in=14" in overrides and "method.sample_every=1" in overrides
    assert "trainer.max_steps=40" in module.job_overrides("dip", args)
    with pytest.raises(SystemExit):
        module.parse_args(["--steps-for", "nope=10"])
    with pytest.raises(SystemExit):
        module.parse_args(["--steps-for", "dip=ten"])


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_paper_table_composes_the_mfvi_dip_papers_own_settings(tmp_path, task):
    """One learning rate for all four methods per task; each method's optimiser as its script."""
    from dip_lightning.config import compose_config

    module = load_paper_table()
    args = module.parse_args(["--task", task, "--image", "package:mr_small", "--size", "64"])
    rate = 5e-3 if task == "denoising" else 3e-3
    expected = {
        "dip": ("torch.optim.Adam", None),
        "sgld": ("torch.optim.Adam", 5e-8),
        "mcdropout": ("torch.optim.AdamW", 1e-4),
        "mfvi": ("torch.optim.AdamW", 0.01),
    }
    for method, (optimizer, decay) in expected.items():
        cfg = compose_config(module.job_overrides(method, args), tmp_path / method)
        assert cfg.method.optimizer._target_ == optimizer
        assert cfg.method.optimizer.lr == pytest.approx(rate)
        assert cfg.method.optimizer.get("weight_decay") == decay
        assert cfg.data.name == "mr_small" and cfg.data.size == 64
    sgld = compose_config(module.job_overrides("sgld", args), tmp_path / "sgld")
    assert sgld.method.noisy_parameters == "all"


@pytest.mark.parametrize("method", ["dip", "sgld"])
def test_cosine_schedule_takes_the_rate_to_zero_at_max_steps(small_config, tmp_path, method):
    run(small_config(f"method={method}", "method.lr_schedule=cosine", "trainer.max_steps=6"))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    (group,) = checkpoint["optimizer_states"][0]["param_groups"]
    assert group["initial_lr"] == pytest.approx(build_config_lr(small_config, method))
    assert group["lr"] == pytest.approx(0.0, abs=1e-12)
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 6


def build_config_lr(small_config, method: str) -> float:
    return float(small_config(f"method={method}").method.optimizer.lr)


def test_backtracking_restores_weights_and_optimiser_state_and_halves_the_rate():
    net = nn.Conv2d(1, 2, 3)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    guard = Backtracking(drop_db=5.0)
    assert loss_ratio(5.0) == pytest.approx(10**0.5)

    def adam_step() -> None:
        net(torch.ones(1, 1, 4, 4)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    assert not guard.step(net, optimizer, torch.tensor(1.0))  # no optimiser state yet
    adam_step()
    assert not guard.step(net, optimizer, torch.tensor(3.0))  # a 4.8 dB drop is allowed
    weights = [p.detach().clone() for p in net.parameters()]
    moments = [optimizer.state[p]["exp_avg"].clone() for p in net.parameters()]
    adam_step()
    assert guard.step(net, optimizer, torch.tensor(3.0 * 3.2))  # 5.05 dB: back to the loss-3 point
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), weights))
    assert all(torch.equal(optimizer.state[p]["exp_avg"], m) for p, m in zip(net.parameters(), moments))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert guard.step(net, optimizer, torch.tensor(float("nan")))
    assert guard.restores == 2 and guard.accepted_loss == 3.0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


def test_backtracking_before_the_first_update_clears_the_optimiser_state():
    net = nn.Linear(2, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    guard = Backtracking(drop_db=3.0)
    guard.step(net, optimizer, torch.tensor(1.0))
    net(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert guard.step(net, optimizer, torch.tensor(10.0))
    assert all(p not in optimizer.state for p in net.parameters())


class ScrambleWeights(pl.Callback):
    """Throw the network far off before one step, as a bad Adam update does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            generator = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in pl_module.net.parameters():
                    p.add_(5.0 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("method", ["dip", pytest.param("sgld", marks=pytest.mark.long)])
def test_backtracking_takes_a_collapsed_step_again_from_the_previous_weights(small_config, method):
    steady = (*method_overrides(method), "method.input.perturbation_std=0")
    guarded = fit(small_config(*steady, "method.backtrack_db=5"), 14, callbacks=[ScrambleWeights(10)])
    psnr = torch.stack(guarded.trajectory.psnr_history)
    assert len(psnr) == 14 and guarded.backtracking_summary() == {"backtracks": 1}
    assert guarded.optimizers(use_pl_optimizer=False).param_groups[0]["lr"] == pytest.approx(
        0.5 * float(small_config(method_overrides(method)[0]).method.optimizer.lr)
    )
    # Step 10 evaluates the weights of step 9 again.
    assert psnr[10] == pytest.approx(float(psnr[9]), abs=1e-4)
    unguarded = fit(small_config(*steady), 14, callbacks=[ScrambleWeights(10)])
    assert unguarded.backtracking_summary() == {}
    assert float(torch.stack(unguarded.trajectory.psnr_history)[10]) < float(psnr[9]) - 3.0


def test_backtracking_run_reports_the_number_of_restores(small_config, tmp_path):
    run(small_config("method=dip", "method.backtrack_db=5", "trainer.max_steps=5"))
    assert json.loads((tmp_path / "metrics.json").read_text())["backtracks"] == 0
