"""Replicated runs: ``method.replicates=K`` fits K independent networks as one batched computation.

Replicate k is the run with seed ``seed + k``: its network is initialised, its input drawn and its
training noise (input perturbation, mean-field weight noise) sampled exactly as that run would do
them, so each replicate matches a separate run to floating-point rounding. The K networks are
stacked into one (:mod:`dip_lightning.models.replicated`) and trained by one optimiser on the sum of
the replicates' losses, which gives every replicate its own gradient; logged losses are the means
over replicates.

What the run reports is the ensemble: the mean of the replicates' reconstructions, with the spread
of the replicates added to the epistemic variance (law of total variance). Step-wise tracking,
early stopping and image logging follow the ensemble's output; the trajectory also keeps each
replicate's EMA and PSNR curve. Each replicate's metrics, their mean and standard deviation and
the across-replicate variance map (another uncertainty estimate, what a deep ensemble reports) go
into metrics.json and the run directory (:mod:`dip_lightning.job.replicate_results`).

A method opts in with the class attribute ``supports_replicates = True`` (plain DIP and MFVI: all
their randomness is drawn through :class:`~dip_lightning.models.replicated.ReplicaNoise`); the
method then owns a :class:`Replicas` and builds its stacked network with it. ``sgld`` keeps its
samples and Langevin noise per network and ``mcdropout`` draws dropout masks from the global
generator, so they do not opt in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dip_lightning.errors import ConfigError
from dip_lightning.methods.prediction import Prediction, measurement_variance
from dip_lightning.methods.seeds import rank_seed
from dip_lightning.models.replicated import ReplicaNoise, replicate_network
from dip_lightning.physics.base import ForwardOperator

if TYPE_CHECKING:
    from dip_lightning.methods.base import DeepImagePrior

SETTING = "method.replicates"


def ensemble(predictions: list[Prediction], operator: ForwardOperator) -> Prediction:
    """The replicates as one predictive distribution: mean of the means, and by the law of total
    variance the mean of their variances plus the variance of their means (added to epistemic),
    in image space and, through the operator, in measurement space. The replicates' samples are
    pooled: their spread about the pooled mean is that same total variance."""
    means = torch.cat([p.mean for p in predictions])
    samples = [p.samples for p in predictions]
    return Prediction(
        mean=means.mean(dim=0, keepdim=True),
        epistemic=torch.cat([p.epistemic for p in predictions]).mean(dim=0, keepdim=True)
        + means.var(dim=0, unbiased=False, keepdim=True),
        aleatoric=torch.cat([p.aleatoric for p in predictions]).mean(dim=0, keepdim=True),
        measurement_epistemic=torch.cat([p.measurement_epistemic for p in predictions]).mean(
            dim=0, keepdim=True
        )
        + measurement_variance(means, operator),
        samples=None if any(s is None for s in samples) else torch.cat(samples),  # type: ignore[arg-type]
    )


def check_stopping(replicates: int, criterion: Any) -> None:
    """Refuse a stopping rule whose detection would replace the reconstruction: it chooses along
    one trajectory of outputs, and a replicated run has K of them."""
    if replicates > 1 and criterion.reports_detection:
        raise ConfigError(
            SETTING,
            replicates,
            f"early stopping ({criterion.name}) follows one trajectory; use stopping=fixed",
        )


def replicas_for(method: DeepImagePrior) -> Replicas:
    """The replicas of ``method`` (``method.replicates`` > 1), or a ConfigError naming the setting:
    the method must opt in, and nothing may couple the replicates."""
    if not method.supports_replicates:
        raise ConfigError(
            SETTING,
            method.replicates,
            f"{type(method).__name__} cannot train replicates: it draws training noise that the replicas "
            "cannot split per replicate (its class does not set supports_replicates); use method.replicates=1",
        )
    if method.grad_clip > 0:
        raise ConfigError(
            SETTING,
            method.replicates,
            "clipping the gradient norm would couple the replicates; set method.grad_clip=0",
        )
    return Replicas(method.seed, method.replicates)


class Replicas:
    """The K replicates of a method's run: their seeds, noise streams and stacked network.

    Args:
        seed: the run's seed; replicate k has ``seed + k``.
        count: K >= 2.
    """

    def __init__(self, seed: int, count: int) -> None:
        self.seeds = [int(seed) + k for k in range(count)]
        self.noise = ReplicaNoise([rank_seed(s, 0) for s in self.seeds])
        self.last_predictions: list[Prediction] | None = None

    @property
    def count(self) -> int:
        return len(self.seeds)

    def stack(self, method: DeepImagePrior) -> None:
        """Give ``method`` the K networks and inputs as one (its own are those of replicate 0)."""
        if method.fitted_operator is not None:
            raise ConfigError(
                SETTING,
                self.count,
                "the operator's parameters are fitted with the image and would be shared by the "
                "replicates; use method.replicates=1",
            )
        nets = [method.net, *(method.build_network(s) for s in self.seeds[1:])]
        inputs = [method.net_input, *(method.build_input(s) for s in self.seeds[1:])]
        method.net = replicate_network(nets, self.noise)
        method.net_input = torch.cat(inputs)
        self.last_predictions = None

    def reseed(self, rank: int, device: torch.device) -> None:
        """Restart each replicate's training noise as the run of its seed does on ``rank``."""
        self.noise.reseed([rank_seed(s, rank) for s in self.seeds], device)

    def perturb(self, net_input: Tensor, std: float) -> Tensor:
        """The stacked input plus each replicate's own perturbation noise."""
        if std <= 0:
            return net_input
        return net_input + std * self.noise.batch_like(net_input)

    @torch.no_grad()
    def predictions(self, method: DeepImagePrior) -> list[Prediction]:
        """Each replicate's predictive distribution, as the method alone would report it."""
        k, t = self.count, method.num_samples
        images, log_precision = method.sample_outputs(t)
        images = images.unflatten(0, (k, t))
        means = images.mean(dim=1)
        trajectory = method.trajectory
        if method.reconstruction == "ema" and trajectory.replica_ema.steps > 0:
            means = trajectory.replica_ema.value
        elif method.reconstruction == "last" and trajectory.replica_images is not None:
            means = trajectory.replica_images
        epistemic = images.var(dim=1, unbiased=False)
        precision = None if log_precision is None else log_precision.unflatten(0, (k, t))
        return [
            Prediction(
                means[i : i + 1],
                epistemic[i : i + 1],
                method.aleatoric_variance(None if precision is None else precision[i]),
                measurement_variance(images[i], method.problem.operator),
                samples=images[i],
            )
            for i in range(k)
        ]

    @torch.no_grad()
    def predict(self, method: DeepImagePrior) -> Prediction:
        """The ensemble's prediction; the replicates' own are kept for the results."""
        self.last_predictions = self.predictions(method)
        return ensemble(self.last_predictions, method.problem.operator)
