"""The predictive distribution of a method and its evaluation during training.

Mixed into :class:`~dip_lightning.methods.base.DeepImagePrior`: T Monte Carlo samples of the
network output in one batched forward pass, their mean and variances (image and measurement
space), and the evaluation every ``check_val_every_n_epoch`` steps. A replicated run reports the
ensemble of its replicates (:class:`~dip_lightning.methods.replicates.Replicas`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dip_lightning.methods.evaluation import evaluate_prediction
from dip_lightning.methods.prediction import Prediction, measurement_variance
from dip_lightning.models.layers import per_sample_norm


class PredictiveDistribution:
    """Sampling, the predictive distribution and evaluation, on the attributes of the method
    (``net``, ``net_input``, ``problem``, ``trajectory``, ``replicas``, ``num_samples``,
    ``reconstruction``, ``log_precision_clamp``, ``calibration``)."""

    @torch.no_grad()
    def sample_outputs(self, num_samples: int) -> tuple[Tensor, Tensor | None]:
        """Draw ``num_samples`` network outputs in one batched pass on the unperturbed input.

        Normalisation layers use each sample's own statistics, exactly as training (batch of one)
        does, and their running statistics are left alone.
        """
        z = self.net_input.repeat_interleave(num_samples, dim=0)  # replicate-major if replicated
        with per_sample_norm(self.net):
            output = self.net(z)
        return self.split_output(output)

    @torch.no_grad()
    def predict_distribution(self) -> Prediction:
        """The predictive mean and variances at the current state of training (for replicates,
        their ensemble)."""
        if self.replicas is not None:
            return self.replicas.predict(self)
        images, log_precision = self.sample_outputs(self.num_samples)
        mean = images.mean(dim=0, keepdim=True)
        epistemic = images.var(dim=0, unbiased=False, keepdim=True)
        aleatoric = self.aleatoric_variance(log_precision)
        trajectory = self.trajectory
        if self.reconstruction == "ema" and trajectory is not None and trajectory.ema.steps > 0:
            mean = trajectory.ema.value
        elif self.reconstruction == "last" and trajectory is not None and trajectory.latest_image is not None:
            mean = trajectory.latest_image
        return Prediction(
            mean=mean,
            epistemic=epistemic,
            aleatoric=aleatoric,
            measurement_epistemic=measurement_variance(images, self.problem.operator),
            samples=images,
        )

    def aleatoric_variance(self, log_precision: Tensor | None) -> Tensor:
        """Mean over samples of exp(-s), broadcast to the image channels; zero without a channel."""
        shape = (1, self.problem.channels, *self.problem.image_shape)
        if log_precision is None:
            return torch.zeros(shape, device=self.net_input.device)
        s = log_precision.clamp(-self.log_precision_clamp, self.log_precision_clamp)
        return torch.exp(-s).mean(dim=0, keepdim=True).expand(shape)

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Evaluate the predictive distribution (every ``check_val_every_n_epoch`` steps).

        Logged as ``val/*`` at the current step (averaged over ranks in data-parallel runs) and
        kept in the trajectory for the curves file.
        """
        metrics = evaluate_prediction(self.predict_distribution(), self.problem, self.calibration)
        distributed = self.trainer.world_size > 1
        for name, value in metrics.items():
            self.log(f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=distributed)
        self.trajectory.add_evaluation(self.global_step, metrics)
