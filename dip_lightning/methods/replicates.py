"""Replicated runs: ``method.replicates=K`` fits K independent networks as one batched computation.

Replicate k is the run with seed ``seed + k``: its network is initialised, its input drawn and its
training noise (input perturbation, mean-field weight noise) sampled exactly as that run would do
them, so each replicate matches a separate run to floating-point rounding. The K networks are
stacked into one (:mod:`dip_lightning.models.replicated`) and trained by one optimiser on the sum of
the replicates' losses, which gives every replicate its own gradient; logged losses are the means
over replicates.

What the run reports is the ensemble: the mean of the replicates' reconstructions, with the spread
of the replicates added to the epistemic variance (law of total variance). Step-wise tracking,
early stopping and image logging follow the ensemble's output. Each replicate's metrics, their mean
and standard deviation and the across-replicate variance map (another uncertainty estimate, what a
deep ensemble reports) go into metrics.json and the run directory
(:mod:`dip_lightning.job.replicate_results`).

Supported: ``dip`` and ``mfvi``. ``sgld`` keeps its samples and Langevin noise per network and
``mcdropout`` draws dropout masks from the global generator; both are rejected for now.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dip_lightning.errors import ConfigError
from dip_lightning.methods.base import DeepImagePrior, rank_seed
from dip_lightning.methods.dip import DIP
from dip_lightning.methods.mfvi import MeanFieldDIP
from dip_lightning.methods.prediction import Prediction, measurement_variance
from dip_lightning.methods.resume_state import restore_ema
from dip_lightning.metrics.running import ExponentialMovingAverage
from dip_lightning.models.replicated import ReplicaNoise, replicate_network
from dip_lightning.physics.base import ForwardOperator
from dip_lightning.physics.observation import InverseProblem

SUPPORTED = ("dip", "mfvi")
FIXED_STOPPING = "dip_lightning.stopping.criteria.FixedSteps"
RESUME_KEY = "dip_lightning_replicates"


def psnr_per_replicate(images: Tensor, truth: Tensor) -> Tensor:
    """PSNR (data range 1) of each image of a (K, C, H, W) batch against one truth, shape (K,)."""
    mse = (images.detach().float() - truth.float()).square().flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse)


def ensemble(predictions: list[Prediction], operator: ForwardOperator) -> Prediction:
    """The replicates as one predictive distribution: mean of the means, and by the law of total
    variance the mean of their variances plus the variance of their means (added to epistemic),
    in image space and, through the operator, in measurement space."""
    means = torch.cat([p.mean for p in predictions])
    return Prediction(
        mean=means.mean(dim=0, keepdim=True),
        epistemic=torch.cat([p.epistemic for p in predictions]).mean(dim=0, keepdim=True)
        + means.var(dim=0, unbiased=False, keepdim=True),
        aleatoric=torch.cat([p.aleatoric for p in predictions]).mean(dim=0, keepdim=True),
        measurement_epistemic=torch.cat([p.measurement_epistemic for p in predictions]).mean(
            dim=0, keepdim=True
        )
        + measurement_variance(means, operator),
    )


class ReplicatedMixin:
    """K runs of the method it is mixed into, stacked into one network (see the module doc).

    Args:
        replicates: K >= 2; replicate k has the seed ``seed + k``.
    """

    def __init__(self, *args: Any, replicates: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replicates = check_replicates(replicates, minimum=2)
        if self.grad_clip > 0:
            raise ConfigError(
                "method.replicates",
                replicates,
                "clipping the gradient norm would couple the replicates; set method.grad_clip=0",
            )
        self.noise: ReplicaNoise | None = None
        self.replica_ema: ExponentialMovingAverage | None = None
        self.replica_images: Tensor | None = None
        self.replica_psnr_history: list[Tensor] = []
        self.last_replicate_predictions: list[Prediction] | None = None
        self._replica_record: dict[str, Any] | None = None

    @property
    def replicate_seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.replicates)]

    def attach(self, problem: InverseProblem) -> DeepImagePrior:
        super().attach(problem)  # the network and input of replicate 0
        seeds = self.replicate_seeds
        nets = [self.net, *(self.build_network(s) for s in seeds[1:])]
        inputs = [self.net_input, *(self.build_input(s) for s in seeds[1:])]
        self.noise = ReplicaNoise([rank_seed(s, 0) for s in seeds])
        self.net = replicate_network(nets, self.noise)
        self.net_input = torch.cat(inputs)
        self.replica_ema = ExponentialMovingAverage(self.ema_decay)
        self.replica_images = None
        self.replica_psnr_history = []
        self.last_replicate_predictions = None
        return self

    def on_fit_start(self) -> None:
        super().on_fit_start()
        rank = self.global_rank
        self.noise.reseed([rank_seed(s, rank) for s in self.replicate_seeds], self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add what the base record does not hold: each replicate's EMA, curve and noise stream."""
        super().on_save_checkpoint(checkpoint)
        history = self.replica_psnr_history
        checkpoint[RESUME_KEY] = {
            "replicates": self.replicates,
            "ema": self.replica_ema.state_dict(),
            "images": None if self.replica_images is None else self.replica_images.detach().clone(),
            "psnr_history": torch.stack(history).cpu() if history else torch.zeros(0),
            "noise": self.noise.get_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        record = checkpoint.get(RESUME_KEY)
        if record is None or int(record["replicates"]) != self.replicates:
            found = None if record is None else record["replicates"]
            raise ConfigError(
                "method.replicates", self.replicates, f"the checkpoint holds {found} replicates"
            )
        self._replica_record = record

    def on_train_start(self) -> None:
        super().on_train_start()  # the base record first, then the replicates' own
        record, self._replica_record = self._replica_record, None
        if record is None:
            return
        device = self.device
        restore_ema(self.replica_ema, record["ema"], device)
        if record["images"] is not None:
            self.replica_images = record["images"].to(device)
        self.replica_psnr_history = list(record["psnr_history"].to(device).unbind())
        if record["noise"]:
            self.noise.set_state(record["noise"], device)

    # ------------------------------------------------------------------ training
    def perturbed_input(self) -> Tensor:
        std = float(self.input_settings["perturbation_std"])
        if std <= 0:
            return self.net_input
        return self.net_input + std * self.noise.batch_like(self.net_input)

    def extra_loss(self) -> Tensor | None:
        """The weight terms are sums over all replicates' weights: their mean, like the data term."""
        extra = super().extra_loss()
        return None if extra is None else extra / self.replicates

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Back-propagate the sum of the replicates' losses (the loss is their mean)."""
        super().backward(loss * self.replicates, *args, **kwargs)

    def track_output(self, image: Tensor) -> None:
        """Keep each replicate's EMA and PSNR; the base bookkeeping follows the ensemble's output."""
        self.replica_images = image
        self.replica_ema.update(image)
        truth = self.problem.ground_truth
        if truth is not None:
            self.replica_psnr_history.append(psnr_per_replicate(image, truth))
        super().track_output(image.mean(dim=0, keepdim=True))

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def replicate_predictions(self) -> list[Prediction]:
        """Each replicate's predictive distribution, as the method alone would report it."""
        k, t = self.replicates, self.num_samples
        images, log_precision = self.sample_outputs(t)
        images = images.unflatten(0, (k, t))
        means = images.mean(dim=1)
        if self.reconstruction == "ema" and self.replica_ema.steps > 0:
            means = self.replica_ema.value
        elif self.reconstruction == "last" and self.replica_images is not None:
            means = self.replica_images
        epistemic = images.var(dim=1, unbiased=False)
        precision = None if log_precision is None else log_precision.unflatten(0, (k, t))
        return [
            Prediction(
                means[i : i + 1],
                epistemic[i : i + 1],
                self.aleatoric_variance(None if precision is None else precision[i]),
                measurement_variance(images[i], self.problem.operator),
            )
            for i in range(k)
        ]

    @torch.no_grad()
    def predict_distribution(self) -> Prediction:
        self.last_replicate_predictions = self.replicate_predictions()
        return ensemble(self.last_replicate_predictions, self.problem.operator)

    def psnr_curves(self) -> dict[str, Any]:
        curves = super().psnr_curves()
        history = self.replica_psnr_history
        curves["psnr_replicates"] = torch.stack(history).T.cpu().tolist() if history else []
        return curves


class ReplicatedDIP(ReplicatedMixin, DIP):
    """``method=dip`` with ``method.replicates`` > 1."""


class ReplicatedMeanFieldDIP(ReplicatedMixin, MeanFieldDIP):
    """``method=mfvi`` with ``method.replicates`` > 1."""


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__name__}"


REPLICATED: dict[str, type] = {
    class_path(DIP): ReplicatedDIP,
    class_path(MeanFieldDIP): ReplicatedMeanFieldDIP,
}
"""The replicated variant of each supported method, by the ``_target_`` of its config."""


def check_replicates(value: Any, minimum: int = 1) -> int:
    """``method.replicates`` as an int, or a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError("method.replicates", value, f"must be an integer >= {minimum}")
    return value


def replicated_method_config(cfg: DictConfig) -> DictConfig:
    """``cfg.method``, pointing at the replicated variant of the method when replicates > 1.

    Checked here, before anything is built: the number, the method, and the stopping rule (a
    criterion watches one trajectory, so replicated runs train for the fixed number of steps).
    """
    method_cfg = cfg.method
    replicates = check_replicates(method_cfg.get("replicates", 1))
    if replicates == 1:
        return method_cfg
    target = str(method_cfg._target_)
    replicated_class = REPLICATED.get(target)
    if replicated_class is None:
        raise ConfigError(
            "method.replicates",
            replicates,
            f"{target.rpartition('.')[2]} cannot train replicates; supported methods: {', '.join(SUPPORTED)}",
        )
    criterion = str(cfg.stopping.criterion.get("_target_", FIXED_STOPPING))
    if criterion != FIXED_STOPPING:
        raise ConfigError(
            "method.replicates",
            replicates,
            f"early stopping ({criterion.rpartition('.')[2]}) follows one trajectory; use stopping=fixed",
        )
    replicated = OmegaConf.create(OmegaConf.to_container(method_cfg, resolve=True))
    replicated._target_ = class_path(replicated_class)
    return replicated
