"""Log images of the reconstruction, observation and truth to W&B every N steps."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from dip_lightning.errors import check_positive
from dip_lightning.viz.maps import to_display


def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


class ImageLogger(pl.Callback):
    """Every ``every_n_steps`` steps, log the current output and its EMA; once, the inputs.

    Images go only to W&B loggers (CSV loggers cannot hold them). The copy to the host happens
    only on logging steps, so the training loop stays asynchronous on a GPU.
    """

    def __init__(self, every_n_steps: int = 500) -> None:
        self.every_n_steps = int(check_positive("callbacks.image_logger.every_n_steps", every_n_steps))
        self._static_logged = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loggers = wandb_loggers(trainer)
        step = trainer.global_step
        if not loggers or step % self.every_n_steps != 0 or trainer.global_rank != 0:
            return
        problem = pl_module.problem
        images = {"images/output": pl_module.latest_image}
        if pl_module.ema is not None and pl_module.ema.steps > 0:
            images["images/output_ema"] = pl_module.ema.value
        if not self._static_logged:
            images["images/pseudo_inverse"] = problem.operator.pseudo_inverse(problem.observation)
            if problem.ground_truth is not None:
                images["images/ground_truth"] = problem.ground_truth
            self._static_logged = True
        for logger in loggers:
            for key, image in images.items():
                logger.log_image(key=key, images=[to_display(image.detach().float().cpu())], step=step)
