"""Supervised pretraining for educated DIP: `python -m dip_lightning.pretrain task=ct [overrides]`.

Composes the same config as ``launch.py`` (``conf/pretrain.yaml`` adds the ``pretrain`` settings
and selects ``method=edip``), so the network, operator, noise and image size are exactly those of
the later fine-tuning run ``python launch.py task=ct method=edip`` with the same overrides. The
network learns to map the FBP of simulated noisy sinograms of random-ellipse phantoms to the
phantoms (Adam with a one-cycle schedule, as in Barbano et al.), and its weights are written to
``method.checkpoint``, where the fine-tuning run reads them.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dip_lightning.config import build
from dip_lightning.data.synthetic_ct import SyntheticCTDataModule
from dip_lightning.errors import ConfigError, DipError, check_choice, check_int, check_positive
from dip_lightning.methods.base import DeepImagePrior
from dip_lightning.methods.edip import save_pretrained
from dip_lightning.methods.network_input import make_network_input
from dip_lightning.metrics.image import psnr
from dip_lightning.models.acceleration import architecture
from dip_lightning.models.layers import per_sample_norm

log = logging.getLogger(__name__)

SCHEDULES = ("one_cycle", "constant")
PROGRESS_EVERY = 50


class SupervisedPretraining(pl.LightningModule):
    """Fits ``net`` to map FBP images (repeated over the input channels) to phantoms with the MSE.

    Normalisation layers use per-sample statistics, as they do when the network is later fitted
    to a single measurement, so a batch of 16 trains the same function as 16 batches of one.
    With ``crop_size`` every training batch is cut to one random square of that side (the same
    window in FBP and phantom): the network is convolutional, so it learns the same FBP-to-image
    map from a quarter of the pixels at a quarter of the cost; validation sees whole images.
    """

    def __init__(
        self,
        net: nn.Module,
        channels: int,
        lr: float,
        max_steps: int,
        schedule: str = "one_cycle",
        crop_size: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.channels = int(channels)
        self.lr = float(check_positive("pretrain.lr", lr))
        self.max_steps = int(max_steps)
        self.schedule = str(check_choice("pretrain.schedule", schedule, SCHEDULES))
        self.crop_size = crop_size
        self.last_val_psnr: float | None = None
        self.last_fbp_psnr: float | None = None
        self.last_val_step = -1

    def forward(self, fbp: Tensor) -> Tensor:
        # The same input as educated DIP builds from the measurement's FBP.
        z = make_network_input("pseudo_inverse", self.channels, tuple(fbp.shape[-2:]), 1.0, 0, fbp)
        with per_sample_norm(self.net):
            return self.net(z)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        fbp, target = batch
        if self.crop_size is not None:
            fbp, target = random_crop(self.crop_size, fbp, target)
        loss = F.mse_loss(self(fbp), target)
        self.log("pretrain/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        if self.global_step % PROGRESS_EVERY == 0:  # the CPU trainer shows no progress bar
            log.info(
                "step %d of %d: training MSE %.3g", self.global_step, self.max_steps, float(loss.detach())
            )
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val: list[tuple[Tensor, Tensor]] = []

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        fbp, target = batch
        output = self(fbp)
        self._val.append((psnr(output, target), psnr(fbp.clamp(0, 1), target)))

    def on_validation_epoch_end(self) -> None:
        network = torch.cat([v[0].reshape(-1) for v in self._val]).mean()
        fbp = torch.cat([v[1].reshape(-1) for v in self._val]).mean()
        self.last_val_psnr, self.last_fbp_psnr = float(network), float(fbp)
        self.last_val_step = self.global_step
        self.log("pretrain/val_psnr", network)
        self.log("pretrain/val_fbp_psnr", fbp)
        log.info("step %d: validation PSNR %.2f dB (FBP %.2f dB)", self.global_step, network, fbp)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        if self.schedule == "constant":
            return optimizer
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=self.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def random_crop(size: int, *images: Tensor) -> tuple[Tensor, ...]:
    """The same random ``size`` x ``size`` window of every image (torch's seeded generator)."""
    height, width = images[0].shape[-2:]
    top = int(torch.randint(height - size + 1, ()))
    left = int(torch.randint(width - size + 1, ()))
    return tuple(image[..., top : top + size, left : left + size] for image in images)


def check_crop(value: Any, image_shape: tuple[int, int], multiple: int, min_size: int) -> int | None:
    """``pretrain.crop_size``: null, or a side the network accepts that fits in the image."""
    if value is None:
        return None
    side = check_int("pretrain.crop_size", value, 1)
    if side > min(image_shape) or side % multiple or side < min_size:
        raise ConfigError(
            "pretrain.crop_size",
            value,
            f"must be null or a multiple of {multiple} from {max(multiple, min_size)} to "
            f"{min(image_shape)} (the image is {image_shape[0]}x{image_shape[1]})",
        )
    return side


def plain(node: Any) -> Any:
    """A config node as plain Python values (what a weights-only checkpoint may hold)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain the configured network on simulated data and write ``method.checkpoint``.

    Returns a summary (checkpoint path, steps, seconds, validation PSNR of the network and of FBP).
    """
    from dip_lightning.job.run import (
        build_loggers,
        build_problem,
        output_directory,
        quiet_third_party_logs,
        size_multiple,
    )

    quiet_third_party_logs()
    settings = cfg.pretrain
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    target = cfg.method.get("checkpoint")
    if not target:
        raise ConfigError(
            "method.checkpoint", target, "must name the file the pretrained network is written to"
        )
    max_steps = check_int("pretrain.max_steps", settings.max_steps, 1)

    # The measurement problem fixes the image size, operator and noise of the simulated data.
    problem = build_problem(cfg)
    method: DeepImagePrior = build(cfg.method, net=build(architecture(cfg.model)), image_prior=None)
    channels = int(method.input_settings["channels"])
    net = method.net_factory(in_channels=channels, out_channels=problem.channels, **method.network_kwargs())
    data = SyntheticCTDataModule(
        problem.operator,
        problem.noise,
        num_images=settings.num_images,
        val_images=settings.val_images,
        batch_size=settings.batch_size,
        seed_offset=int(settings.seed_offset),
        num_workers=settings.num_workers,
    )
    crop = check_crop(settings.get("crop_size"), tuple(problem.image_shape), *size_multiple(cfg))
    module = SupervisedPretraining(net, channels, settings.lr, max_steps, settings.schedule, crop)
    output_dir = output_directory(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer: pl.Trainer = build(
        cfg.trainer,
        logger=build_loggers(cfg, output_dir) or False,
        callbacks=[],
        max_steps=max_steps,
        max_epochs=-1,
        check_val_every_n_epoch=check_int("pretrain.val_every_n_epochs", settings.val_every_n_epochs, 1),
        log_every_n_steps=min(10, max_steps),
        enable_checkpointing=False,
    )
    start = time.perf_counter()
    interrupted = False
    try:
        trainer.fit(module, datamodule=data)
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.perf_counter() - start
    if trainer.global_rank != 0:
        return {}
    if module.last_val_step != trainer.global_step:  # score the weights that are saved
        trainer.validate(module, datamodule=data, verbose=False)
    summary = {
        "steps": int(trainer.global_step),
        "seconds": round(seconds, 2),
        "val_psnr": module.last_val_psnr,
        "val_fbp_psnr": module.last_fbp_psnr,
        "interrupted": interrupted,
    }
    path = save_pretrained(
        target,
        module.net.cpu(),
        in_channels=channels,
        out_channels=problem.channels,
        image_shape=list(problem.image_shape),
        model=plain(cfg.model),
        operator=plain(cfg.operator),
        noise=plain(cfg.noise),
        pretrain=plain(settings),
        summary={k: v for k, v in summary.items() if v is not None},
    )
    summary["checkpoint"] = str(path)
    print_summary(summary, output_dir)
    if interrupted:
        raise KeyboardInterrupt
    return summary


def print_summary(summary: dict[str, Any], output_dir: Path) -> None:
    lines = [f"[dip-lightning] pretraining: {summary['steps']} steps in {summary['seconds']:.1f} s"]
    if summary.get("val_psnr") is not None and math.isfinite(summary["val_psnr"]):
        lines.append(
            f"  validation PSNR {summary['val_psnr']:.2f} dB (FBP input {summary['val_fbp_psnr']:.2f} dB)"
        )
    lines.append(f"  checkpoint: {summary['checkpoint']}")
    lines.append(f"  logs: {output_dir}")
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="pretrain")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = pretrain(cfg)
    except DipError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    return summary.get("val_psnr")


if __name__ == "__main__":
    main()
