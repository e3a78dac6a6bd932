"""Stochastic gradient Langevin dynamics DIP (Cheng et al. 2019).

Adam with weight decay (the Gaussian weight prior) and, after every optimiser step, Gaussian noise
of std ``noise_scale * lr`` added to the chosen parameters. After ``burn_in`` steps the output is
sampled every ``sample_every`` steps; the posterior mean and variance are running moments of the
samples (Welford updates on the device, float64), never a stored list of images. For the
correlations that the test log-likelihood needs, at most ``kept_samples`` of them are kept, spread
evenly over the chain (:class:`~dip_lightning.metrics.running.ThinnedSamples`).

The samples are the image-space network output of the training step (the original code's choice,
input perturbation included), so super-resolution samples are high-resolution images, not their
downsampled measurements.

``langevin`` chooses the dynamics. ``reference`` (default) is Cheng et al.'s: Adam on the mean
squared error with noise of std 2 lr added after each step. Its variance is a heuristic spread of
the iterates, not a posterior variance. ``sgld`` and ``psgld`` sample the posterior of the weights
instead (:mod:`dip_lightning.methods.langevin`): the loss becomes the negative log-posterior, the
data term scaled to N / (2 sigma^2) times the mean squared residual, with sigma the known noise
level of the measurement (or ``likelihood_std``), and the optimiser adds the noise.

An operator fitted with the image (:meth:`DeepImagePrior.register_operator`, e.g. a blur kernel
of blind deblurring) is a point estimate, not sampled: the Langevin noise goes to the image
network's weights only. With ``reference`` the configured optimiser steps the operator's
parameters with the network's and the noise is added to the network alone; with ``sgld`` /
``psgld`` they take the same (preconditioned) gradient step at temperature 0 (no noise) and
without the weight prior.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from dip_lightning.errors import ConfigError, check_choice, check_int, check_positive
from dip_lightning.methods.base import DeepImagePrior
from dip_lightning.methods.langevin import LangevinDynamics
from dip_lightning.methods.prediction import Prediction
from dip_lightning.methods.seeds import RANK_SEED_STRIDE
from dip_lightning.methods.trajectory import StepRecord
from dip_lightning.metrics.running import RunningMoments, ThinnedSamples
from dip_lightning.physics.holdout import observed_elements
from dip_lightning.tracking import step_output

log = logging.getLogger(__name__)

NOISY_PARAMETERS = ("conv_weights", "all")
LANGEVIN_KINDS = ("reference", "sgld", "psgld")
LANGEVIN_SEED_OFFSET = RANK_SEED_STRIDE - 1
"""The Langevin noise stream is seeded with ``seed * RANK_SEED_STRIDE + LANGEVIN_SEED_OFFSET``."""


def langevin_parameters(model: nn.Module, which: str) -> list[nn.Parameter]:
    """The parameters that receive Langevin noise: conv weights (the original) or all of them."""
    check_choice("method.noisy_parameters", which, NOISY_PARAMETERS)
    if which == "all":
        return [p for p in model.parameters() if p.requires_grad]
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return [m.weight for m in convs]


@torch.no_grad()
def add_langevin_noise(parameters: list[nn.Parameter], std: float, generator: torch.Generator) -> None:
    """Add N(0, std^2) noise to every parameter in place, drawn from ``generator``."""
    if std <= 0:
        return
    for parameter in parameters:
        noise = torch.randn(
            parameter.shape, generator=generator, device=parameter.device, dtype=parameter.dtype
        )
        parameter.add_(noise, alpha=std)


class SGLDDIP(DeepImagePrior):
    """DIP whose weights follow Langevin dynamics; the samples give mean and variance.

    The Langevin noise has its own generator, seeded from ``seed`` alone: in a data-parallel run
    every rank adds the same noise, so the replicas stay identical (their gradients are averaged,
    the noise is not).

    Args:
        noise_scale: the injected noise has std ``noise_scale * lr`` (2 in the original).
        noisy_parameters: ``conv_weights`` (original) or ``all``.
        burn_in: steps before the first sample (7000 in the original).
        sample_every: steps between samples after the burn-in (50 in the original).
        langevin: ``reference`` (Adam plus noise, Cheng et al.), ``sgld`` or ``psgld`` (posterior
            samplers; see the module doc).
        langevin_step: the step size of ``sgld`` / ``psgld`` on the negative log-posterior.
        likelihood_std: the noise std of the Gaussian likelihood of ``sgld`` / ``psgld``; None
            takes the measurement's known noise level.
        temperature: 1 samples the posterior; below 1 a tempered ("cold") one.
        kept_samples: most samples kept as images for the test log-likelihood (0: none, and no
            such metric).
    """

    def __init__(
        self,
        *args: Any,
        noise_scale: float = 2.0,
        noisy_parameters: str = "conv_weights",
        burn_in: int = 7000,
        sample_every: int = 50,
        langevin: str = "reference",
        langevin_step: float = 1e-3,
        likelihood_std: float | None = None,
        temperature: float = 1.0,
        kept_samples: int = 64,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("reconstruction", "predictive_mean")
        super().__init__(*args, **kwargs)
        self.noise_scale = float(check_positive("method.noise_scale", noise_scale, allow_zero=True))
        self.noisy_parameters = str(
            check_choice("method.noisy_parameters", noisy_parameters, NOISY_PARAMETERS)
        )
        self.burn_in = int(check_positive("method.burn_in", burn_in, allow_zero=True))
        self.sample_every = int(check_positive("method.sample_every", sample_every))
        self.langevin = str(check_choice("method.langevin", langevin, LANGEVIN_KINDS))
        self.langevin_step = float(check_positive("method.langevin_step", langevin_step))
        self.likelihood_std = (
            None if likelihood_std is None else float(check_positive("method.likelihood_std", likelihood_std))
        )
        self.temperature = float(check_positive("method.temperature", temperature, allow_zero=True))
        self.posterior_scale = 1.0
        self.kept_samples = check_int("method.kept_samples", kept_samples, 0)
        self.samples = RunningMoments()
        self.measurement_samples = RunningMoments()
        self.kept = ThinnedSamples(self.kept_samples)
        self._noisy: list[nn.Parameter] | None = None
        self._generator: torch.Generator | None = None
        self._generator_state: torch.Tensor | None = None

    @property
    def samples_posterior(self) -> bool:
        """True for the textbook samplers, whose variance is a posterior variance."""
        return self.langevin != "reference"

    def attach(self, problem):  # type: ignore[override]
        super().attach(problem)
        if self.samples_posterior:
            self.posterior_scale = self.negative_log_likelihood_scale(problem)
        self.samples = RunningMoments()
        self.measurement_samples = RunningMoments()
        self.kept = ThinnedSamples(self.kept_samples)
        self._noisy = None
        self._generator = None
        return self

    def on_fit_start(self) -> None:
        super().on_fit_start()
        max_steps = self.trainer.max_steps
        if max_steps is not None and 0 < max_steps <= self.burn_in:
            log.warning(
                "method.burn_in=%d is not below trainer.max_steps=%d: no SGLD sample will be drawn, "
                "so the run reports no uncertainty",
                self.burn_in,
                max_steps,
            )

    def negative_log_likelihood_scale(self, problem) -> float:
        """N / (2 sigma^2): the factor that turns the mean squared residual into the Gaussian
        negative log-likelihood of the N measurement elements used for training."""
        sigma = self.likelihood_std if self.likelihood_std is not None else problem.noise_std
        if sigma is None or not sigma > 0:
            raise ConfigError(
                "method.likelihood_std",
                self.likelihood_std,
                f"method.langevin={self.langevin} needs the noise std of the measurement; the problem "
                f"does not know it (found {sigma}): set method.likelihood_std to a number > 0",
            )
        ones = torch.ones_like(problem.observation, dtype=torch.bool)
        used = observed_elements(problem).expand_as(ones)
        if problem.train_mask is not None:
            used = used & problem.train_mask.bool().expand_as(ones)
        count = float(used.sum())
        return count / (2.0 * sigma**2)

    def build_optimizer(self) -> torch.optim.Optimizer:
        if not self.samples_posterior:
            return super().build_optimizer()
        # The configured weight decay is the precision of the Gaussian weight prior.
        weight_decay = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay") or 0.0
        operator = self.operator_parameters()
        params: Any = self.parameters()
        if operator:
            # The operator's parameters are a point estimate: no Langevin noise, no weight prior.
            ids = {id(p) for p in operator}
            image = [p for p in self.parameters() if id(p) not in ids]
            params = [{"params": image}, {"params": operator, "temperature": 0.0, "weight_decay": 0.0}]
        return LangevinDynamics(
            params,
            lr=self.langevin_step,
            weight_decay=float(weight_decay),
            preconditioned=self.langevin == "psgld",
            temperature=self.temperature,
        )

    def training_step(self, batch: Any, batch_idx: int) -> step_output.StepOutput:
        """The reference's loss, or the negative log-posterior's data part for the samplers."""
        outputs = super().training_step(batch, batch_idx)
        if self.samples_posterior:
            outputs[step_output.LOSS] = outputs[step_output.LOSS] * self.posterior_scale
        return outputs

    def langevin_generator(self, device: torch.device) -> torch.Generator:
        """The Langevin noise stream on ``device``: the same on every rank."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed * RANK_SEED_STRIDE + LANGEVIN_SEED_OFFSET)
            if self._generator_state is not None:  # a resumed run continues the saved stream
                self._generator.set_state(self._generator_state.cpu())
                self._generator_state = None
        return self._generator

    def noise_std(self, optimizer: torch.optim.Optimizer) -> float:
        """Std of the Langevin noise after a step: ``noise_scale`` times the current learning rate."""
        return self.noise_scale * float(optimizer.param_groups[0]["lr"])

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:  # type: ignore[override]
        if self.samples_posterior:
            sampler = getattr(optimizer, "optimizer", optimizer)
            sampler.generator = self.langevin_generator(self.device)
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            return
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        std = self.noise_std(optimizer)
        if std <= 0:
            return
        if self._noisy is None:
            self._noisy = langevin_parameters(self.net, self.noisy_parameters)
        add_langevin_noise(self._noisy, std, self.langevin_generator(self._noisy[0].device))

    def is_sample_step(self, step: int) -> bool:
        return step >= self.burn_in and (step - self.burn_in) % self.sample_every == 0

    def track_output(self, image: Tensor) -> StepRecord:
        record = super().track_output(image)
        if self.is_sample_step(self.global_step):
            self.samples.update(image)
            self.kept.update(image[0])
            with torch.no_grad():
                self.measurement_samples.update(self.problem.operator(image))
        return record

    @torch.no_grad()
    def predict_distribution(self) -> Prediction:
        """Mean and variance of the SGLD samples; the current output while fewer than two exist."""
        if self.samples.count < 2:
            return super().predict_distribution()
        _, log_precision = self.sample_outputs(1)
        dtype = self.net_input.dtype
        kept = self.kept.stacked()
        return Prediction(
            mean=self.samples.mean.to(dtype),
            epistemic=self.samples.variance.to(dtype),
            aleatoric=self.aleatoric_variance(log_precision),
            measurement_epistemic=self.measurement_samples.variance.to(dtype),
            samples=None if kept is None else kept.to(dtype),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["sgld_samples"] = self.samples.state_dict()
        checkpoint["sgld_measurement_samples"] = self.measurement_samples.state_dict()
        checkpoint["sgld_kept_samples"] = self.kept.state_dict()
        if self._generator is not None:
            checkpoint["sgld_generator"] = self._generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "sgld_samples" in checkpoint:
            self.samples.load_state_dict(checkpoint["sgld_samples"])
        if "sgld_measurement_samples" in checkpoint:
            self.measurement_samples.load_state_dict(checkpoint["sgld_measurement_samples"])
        if "sgld_kept_samples" in checkpoint:
            self.kept.load_state_dict(checkpoint["sgld_kept_samples"])
        self._generator_state = checkpoint.get("sgld_generator")
