"""Log images of the reconstruction, observation and truth to W&B every N steps.

The step's output and its EMA come from what ``training_step`` returned (Lightning's ``outputs``,
keys of :mod:`dip_lightning.tracking.step_output`); the observation and the truth from the problem.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from dip_lightning.errors import check_int
from dip_lightning.tracking import step_output
from dip_lightning.viz.maps import to_display


def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


class ImageLogger(pl.Callback):
    """Every ``every_n_steps`` steps, log the current output and its EMA; once, the inputs.

    Images go only to W&B loggers (CSV loggers cannot hold them). The copy to the host happens
    only on logging steps, so the training loop stays asynchronous on a GPU.
    """

    def __init__(self, every_n_steps: int = 500) -> None:
        self.every_n_steps = check_int("callbacks.image_logger.every_n_steps", every_n_steps, 1)
        self._static_logged = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loggers = wandb_loggers(trainer)
        step = trainer.global_step
        if not loggers or step % self.every_n_steps != 0 or trainer.global_rank != 0:
            return
        images = {"images/output": step_output.output_image(outputs, "ImageLogger")}
        ema = step_output.value(outputs, step_output.EMA)
        if ema is not None:
            images["images/output_ema"] = ema
        if not self._static_logged:
            problem = pl_module.problem
            images["images/pseudo_inverse"] = problem.operator.pseudo_inverse(problem.observation)
            if problem.ground_truth is not None:
                images["images/ground_truth"] = problem.ground_truth
            self._static_logged = True
        for logger in loggers:
            for key, image in images.items():
                logger.log_image(key=key, images=[to_display(image.detach().float().cpu())], step=step)
