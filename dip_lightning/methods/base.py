"""The Deep Image Prior loop shared by every method.

A method is a LightningModule that fits a network to the measurement of one
:class:`~dip_lightning.physics.observation.InverseProblem`. It only talks to the problem through
the operator interface (forward, adjoint, pseudo-inverse, variance propagation), so it never knows
which task it runs on. Subclasses change the network (Bayesian layers, dropout), the loss terms
(KL, heteroscedastic likelihood), the optimiser step (SGLD noise) or how the predictive
distribution is drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from dip_lightning.errors import (
    ConfigError,
    DivergenceError,
    check_choice,
    check_in_range,
    check_int,
    check_positive,
)
from dip_lightning.methods import resume_state
from dip_lightning.methods.backtracking import Backtracking
from dip_lightning.methods.evaluation import DEFAULT_CALIBRATION, Calibration
from dip_lightning.methods.fidelity import FidelitySwitch
from dip_lightning.methods.hooks import MethodHooks
from dip_lightning.methods.network_input import perturb
from dip_lightning.methods.network_setup import NetworkSetup
from dip_lightning.methods.optimisation import (
    LR_SCHEDULES,
    LrSchedule,
    OptimizerFactory,
    check_optimizer,
    parameter_groups,
)
from dip_lightning.methods.predictive import PredictiveDistribution
from dip_lightning.methods.replicates import replicas_for
from dip_lightning.methods.seeds import rank_seed
from dip_lightning.methods.trajectory import StepRecord, Trajectory
from dip_lightning.physics.holdout import observed_elements
from dip_lightning.physics.observation import InverseProblem
from dip_lightning.tracking import step_output
from dip_lightning.tracking.step_logging import logs_this_step

log = logging.getLogger(__name__)

LIKELIHOODS = ("mse", "nll")
RECONSTRUCTIONS = ("ema", "last", "predictive_mean")
__all__ = ["LR_SCHEDULES", "DeepImagePrior", "check_optimizer"]
NetFactory = Callable[..., nn.Module]


class DeepImagePrior(MethodHooks, NetworkSetup, PredictiveDistribution, pl.LightningModule):
    """Plain DIP: Adam on the MSE between A f(z) and y, with input perturbation and an output EMA.

    Args:
        net: builds the network; called with ``in_channels``, ``out_channels`` and the keyword
            arguments a subclass adds (``conv``, ``dropout_p``, ``log_precision_channel``).
        optimizer: a partial optimiser (``torch.optim.Adam`` by default) given the parameters.
        input: network input settings: ``kind`` (noise or pseudo_inverse), ``channels``, ``scale``
            and ``perturbation_std`` (std of the fresh noise added to z at every step).
        likelihood: ``mse`` or ``nll`` (heteroscedastic Gaussian with a predicted log-precision).
        image_prior: optional regulariser on the output image (TV), any callable image -> loss.
        ema_decay: weight of the output exponential moving average (0.99 in the DIP code).
        num_samples: Monte Carlo samples at evaluation (ignored by deterministic DIP).
        reconstruction: what the run reports: the EMA, the last output, or the predictive mean.
        log_precision_clamp: |s| bound of the predicted log-precision in the NLL.
        grad_clip: max gradient norm (0 disables); CT DIP+TV uses 1.
        divergence_check_every: steps between finiteness checks of the loss (each costs a device sync).
        lr_schedule: ``constant`` (the DIP papers), ``cosine``: the learning rate falls from its
            configured value to zero over ``trainer.max_steps`` (CosineAnnealingLR, per step), so
            the last iterates settle, or ``multistep`` (:mod:`dip_lightning.methods.optimisation`).
        fidelity_switch: ``{at, loss}``: from the fraction ``at`` of ``trainer.max_steps`` on, the
            data fidelity is ``loss`` (ssim, mse, l1) instead of the likelihood (SelfDeblur's MSE
            then 1 - SSIM; :mod:`dip_lightning.methods.fidelity`). ``at: null`` never switches.
        backtrack_db: when the data-fidelity loss of a step is worse than the last accepted one by
            more than this many dB of PSNR against the measurement, the weights of that step are
            restored with the optimiser's state, and the step is taken again at half the learning
            rate (``dip_lightning.methods.backtracking``; the DIP code's fallback used 5 dB).
            None disables it.
        replicates: K independent networks trained as one, replicate k with seed ``seed + k``
            (:mod:`dip_lightning.methods.replicates`); only methods whose class sets
            :attr:`supports_replicates` accept K > 1.

    The record of the outputs (EMA, latest output, peak, curves) is :attr:`trajectory`, built in
    :meth:`attach`; ``training_step`` returns what the step produced under the keys of
    :mod:`dip_lightning.tracking.step_output`, for the callbacks.
    """

    def __init__(
        self,
        net: NetFactory,
        optimizer: OptimizerFactory,
        input: dict[str, Any] | None = None,
        likelihood: str = "mse",
        image_prior: Callable[[Tensor], Tensor] | None = None,
        ema_decay: float = 0.99,
        num_samples: int = 1,
        reconstruction: str = "ema",
        log_precision_clamp: float = 20.0,
        grad_clip: float = 0.0,
        divergence_check_every: int = 1,
        lr_schedule: str = "constant",
        lr_milestones: list[float] | None = None,
        lr_gamma: float = 0.5,
        fidelity_switch: dict[str, Any] | None = None,
        backtrack_db: float | None = None,
        seed: int = 0,
        replicates: int = 1,
    ) -> None:
        super().__init__()
        self.trajectory: Trajectory | None = None
        check_optimizer(optimizer)
        self.net_factory = net
        self.optimizer_factory = optimizer
        settings = {"kind": "noise", "channels": 32, "scale": 0.1, "perturbation_std": 1.0 / 30.0}
        settings.update(dict(input or {}))
        self.input_settings = settings
        self.likelihood = str(check_choice("method.likelihood", likelihood, LIKELIHOODS))
        self.image_prior = image_prior
        self.ema_decay = check_in_range("method.ema_decay", ema_decay, 0.0, 1.0)
        self.num_samples = int(check_positive("method.num_samples", num_samples))
        self.reconstruction = str(check_choice("method.reconstruction", reconstruction, RECONSTRUCTIONS))
        self.log_precision_clamp = check_positive("method.log_precision_clamp", log_precision_clamp)
        self.grad_clip = check_positive("method.grad_clip", grad_clip, allow_zero=True)
        self.divergence_check_every = int(
            check_positive("method.divergence_check_every", divergence_check_every)
        )
        check_positive("method.input.perturbation_std", settings["perturbation_std"], allow_zero=True)
        self.schedule = LrSchedule(lr_schedule, lr_milestones or (), lr_gamma)
        self.lr_schedule = self.schedule.kind
        self.fidelity_switch = FidelitySwitch.from_settings(fidelity_switch)
        self.backtrack_db = (
            None if backtrack_db is None else float(check_positive("method.backtrack_db", backtrack_db))
        )
        self.backtracking: Backtracking | None = None
        self.seed = seed
        self.replicates = check_int("method.replicates", replicates, 1)
        self.replicas = replicas_for(self) if self.replicates > 1 else None
        self.problem: InverseProblem | None = None
        self.net: nn.Module | None = None
        self.fitted_operator: nn.Module | None = None
        """The problem's operator when it has parameters fitted with the image (a submodule then)."""
        self.resumed_record: dict[str, Any] | None = None
        self.calibration: Calibration = DEFAULT_CALIBRATION
        """How evaluations bin the UCE; the job sets it from the ``calibration`` config group."""

    # ------------------------------------------------------------------ set-up
    def attach(self, problem: InverseProblem) -> DeepImagePrior:
        """Bind the method to a problem: build the input and the network for its image shape."""
        self.check_operator(problem.operator)
        if self.uses_log_precision and not problem.operator.measurement_in_image_space:
            raise ConfigError(
                "method.likelihood",
                self.likelihood,
                f"the heteroscedastic NLL predicts a noise level for every image pixel, which only "
                f"means something when the measurement is the image's own pixel grid (denoising, "
                f"inpainting); {type(problem.operator).__name__} measures elsewhere, so use "
                f"method.likelihood=mse",
            )
        self.fidelity_switch.check(problem.observation, self.likelihood)
        self.problem = problem
        self.register_operator(problem.operator)
        if self.uses_log_precision:
            # The likelihood counts only measurement elements that depend on the image: a hole of
            # an inpainting mask says nothing about the noise level there.
            self.register_buffer("likelihood_mask", observed_elements(problem), persistent=False)
        self.register_input(self.build_input(self.seed))
        self.net = self.build_network(self.seed)
        if self.replicas is not None:
            self.replicas.stack(self)
        self.trajectory = Trajectory(problem, self.ema_decay, self.replicates)
        self.backtracking = None if self.backtrack_db is None else Backtracking(self.backtrack_db)
        return self

    def register_operator(self, operator: nn.Module) -> None:
        """Fit the operator's parameters with the image when it has any (e.g. a blur kernel made by
        a small network of its own, for blind deblurring).

        As the submodule :attr:`fitted_operator` its parameters reach the optimiser, follow the
        device and are checkpointed with the network. A fixed operator is left out (a CT system
        matrix would only bloat every checkpoint).
        """
        if any(p.requires_grad for p in operator.parameters()):
            self.fitted_operator = operator

    def operator_parameters(self) -> list[nn.Parameter]:
        """The operator's parameters fitted with the image; empty for a fixed operator."""
        if self.fitted_operator is None:
            return []
        return [p for p in self.fitted_operator.parameters() if p.requires_grad]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> DeepImagePrior:
        """Move the trajectory's peak tensors with the module (``.to``, ``.cpu``, ``.double``)."""
        super()._apply(fn, recurse)
        if self.trajectory is not None:
            self.trajectory.apply_to_peaks(fn)
        return self

    def on_fit_start(self) -> None:
        if self.problem is None:
            raise RuntimeError("call attach(problem) before fitting")
        self.problem = self.problem.to(self.device)
        self.trajectory.problem = self.problem
        # The network was initialised before fitting from the global seed, identically on every
        # rank; from here on each rank draws its own training noise.
        rank, world_size = self.global_rank, self.trainer.world_size
        noise_seed = rank_seed(self.seed, rank)
        torch.manual_seed(noise_seed)
        if world_size > 1:
            log.info(
                "data-parallel rank %d of %d: training noise seeded with %d", rank, world_size, noise_seed
            )
        if self.replicas is not None:
            self.replicas.reseed(rank, self.device)
        self.fidelity_switch.start(self.trainer.max_steps)

    def on_train_start(self) -> None:
        record, self.resumed_record = self.resumed_record, None
        if record is None:
            return
        resume_state.restore(record, self.trajectory, self.device)
        if self.replicas is not None and record["replica_noise"]:
            self.replicas.noise.set_state(record["replica_noise"], self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        noise = None if self.replicas is None else self.replicas.noise.get_state()
        checkpoint[resume_state.KEY] = resume_state.capture(
            type(self).__name__, self.problem, self.trajectory, noise
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied in on_train_start: on the training device, after on_fit_start seeded the noise.
        self.resumed_record = checkpoint.get(resume_state.KEY)

    def on_train_end(self) -> None:
        world_size = self.trainer.world_size
        if world_size > 1:
            # Equal on every rank when the gradients were averaged and the replicas stayed in sync.
            checksum = sum(float(p.detach().double().sum()) for p in self.parameters())
            log.info(
                "data-parallel rank %d of %d: parameter checksum %.12e",
                self.global_rank,
                world_size,
                checksum,
            )

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimiser over every parameter, a fitted operator's in the groups it
        declares (its own learning rate); samplers build their own."""
        return self.optimizer_factory(params=parameter_groups(self, self.fitted_operator))

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        if self.schedule.kind == "constant":
            return optimizer
        # run_settings.check_run_settings has made sure a schedule has a step budget.
        return {
            "optimizer": optimizer,
            "lr_scheduler": self.schedule.scheduler(optimizer, self.trainer.max_steps),
        }

    # ------------------------------------------------------------------ forward
    def split_output(self, output: Tensor) -> tuple[Tensor, Tensor | None]:
        """Separate the image channels from the optional log-precision channel."""
        if not self.uses_log_precision:
            return output, None
        return output[:, :-1], output[:, -1:]

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.split_output(self.net(z))

    def data_fidelity(self, image: Tensor, log_precision: Tensor | None) -> Tensor:
        """MSE through the operator, or the heteroscedastic NLL with a predicted log-precision.

        Residuals enter as |A x - y|^2, so complex measurements (MRI k-space) work as real ones.
        The NLL (mean of exp(s) |r|^2 - s) needs a measurement on the image's pixel grid (checked
        in ``attach``) and counts only the observed elements, for the residual and for ``s``
        alike: a missing pixel has no residual, and its ``-s`` term alone would drive its
        precision to the clamp.
        """
        problem = self.problem
        if self.fidelity_switch.active(self.global_step if self._trainer is not None else 0):
            return self.fidelity_switch(problem.operator(image), problem.observation, problem.training_mean)
        residual_sq = (problem.operator(image) - problem.observation).abs().pow(2)
        if log_precision is None:
            return problem.training_mean(residual_sq)
        s = log_precision.clamp(-self.log_precision_clamp, self.log_precision_clamp)
        return problem.training_mean(torch.exp(s) * residual_sq - s, self.likelihood_mask)

    def perturbed_input(self) -> Tensor:
        """This step's network input: z plus fresh Gaussian noise of ``perturbation_std``."""
        std = float(self.input_settings["perturbation_std"])
        if self.replicas is not None:
            return self.replicas.perturb(self.net_input, std)
        return perturb(self.net_input, std)

    def training_step(self, batch: Any, batch_idx: int) -> step_output.StepOutput:
        """One step: the loss (key ``loss``) and what the step produced, for the callbacks."""
        z = self.perturbed_input()
        image, log_precision = self(z)
        loss = self.data_fidelity(image, log_precision)
        if self.backtracking is not None and self.collapsed_and_restored(loss):
            image, log_precision = self(z)
            loss = self.data_fidelity(image, log_precision)
        self.log_step("train/data_fidelity", loss.detach())
        if self.image_prior is not None:
            regulariser = self.image_prior(image)
            self.log_step("train/image_prior", regulariser.detach())
            loss = loss + regulariser
        if (own_prior := self.output_loss(image)) is not None:
            self.log_step("train/output_loss", own_prior.detach())
            loss = loss + own_prior
        extra = self.extra_loss()
        if extra is not None:
            if self.replicas is not None:
                extra = extra / self.replicates  # a sum over all replicates' weights: their mean
            self.log_step("train/weight_prior", extra.detach())
            loss = loss + extra
        if self.global_step % self.divergence_check_every == 0 and not torch.isfinite(loss):
            raise DivergenceError(self.global_step, "loss")
        self.log_step("train/loss", loss.detach())
        record = self.track_output(image.detach())
        return step_output.step_output(
            loss, record.image, record.misfit, record.psnr, record.ema, self.trajectory.ema_lag
        )

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Back-propagate the loss; for replicates their sum (the loss is their mean), which gives
        every replicate its own gradient."""
        if self.replicas is not None:
            loss = loss * self.replicates
        super().backward(loss, *args, **kwargs)

    def collapsed_and_restored(self, loss: Tensor) -> bool:
        """Let backtracking judge this step's loss; True when it put the previous weights back."""
        optimizer = self.optimizers(use_pl_optimizer=False)
        if not self.backtracking.step(self, optimizer, self.rank_mean(loss)):
            return False
        log.info(
            "step %d: the fit to the measurement fell by more than %g dB; back to the previous "
            "step's weights, learning rate now %.3g",
            self.global_step,
            self.backtrack_db,
            optimizer.param_groups[0]["lr"],
        )
        return True

    def rank_mean(self, value: Tensor) -> Tensor:
        """``value`` averaged over the data-parallel ranks, so that all of them decide alike."""
        value = value.detach()
        if self.trainer.world_size > 1:
            value = self.trainer.strategy.reduce(value, reduce_op="mean")
        return value

    def log_step(self, name: str, value: Tensor) -> None:
        """Log a per-step scalar, only on the steps whose values reach the loggers (see
        :func:`~dip_lightning.tracking.step_logging.logs_this_step`)."""
        if logs_this_step(self._trainer):
            self.log(name, value, on_step=True, on_epoch=False)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.grad_clip)

    def track_output(self, image: Tensor) -> StepRecord:
        """Record this step's detached output in the trajectory and log its misfit and PSNR."""
        record = self.trajectory.record(self.global_step, image)
        self.log_step("train/misfit", record.misfit)
        if record.psnr is not None:
            self.log_step("train/psnr", record.psnr)
            self.log_step("train/psnr_ema", record.ema_psnr)
        return record

    def backtracking_summary(self) -> dict[str, int]:
        """How many steps were taken again after a collapse (metrics.json ``backtracks``)."""
        return {} if self.backtracking is None else {"backtracks": self.backtracking.restores}
