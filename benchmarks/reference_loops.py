"""The platform's training math as a plain PyTorch loop, the way the reference implementations do it.

Each method's step is written out by hand: perturbed input, forward, loss through the operator
(MSE; the heteroscedastic NLL of MC dropout; MSE plus beta times the KL for MFVI), backward, the
optimiser step (plus Langevin noise for SGLD), the output EMA and the PSNR of the output and of
the EMA against the truth at every step. Nothing here goes through Lightning, logging or the
method's bookkeeping, so timing it next to the platform gives the platform's overhead.

The network, its input and the optimiser settings come from the same config the platform runs, so
both loops train the same weights from the same initialisation with the same noise seed.

Variants apply the same switches the platform has: ``bf16`` (autocast), ``channels_last`` and
``compile`` (``torch.compile`` of the network).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from dip_lightning.config import build
from dip_lightning.methods.seeds import RANK_SEED_STRIDE, rank_seed
from dip_lightning.methods.sgld import LANGEVIN_SEED_OFFSET
from dip_lightning.metrics.image import fast_psnr
from dip_lightning.models.bayesian import kl_divergence
from dip_lightning.physics.observation import InverseProblem

VARIANTS = ("fp32", "bf16", "channels_last", "compile")


@dataclass
class ReferenceState:
    """What the loop keeps between steps: the output EMA and the last PSNR (a device tensor)."""

    ema: Tensor
    psnr: Tensor | None = None
    steps: int = 0


REFERENCE_KINDS = ("dip", "sgld", "mcdropout", "mfvi")


def method_kind(cfg: DictConfig) -> str:
    """Which reference loop reproduces the run: the name of its method config (``method=...``)."""
    kind = str(cfg.method_name)
    if kind not in REFERENCE_KINDS:
        raise ValueError(
            f"no reference loop for method={kind}; there is one for {', '.join(REFERENCE_KINDS)}"
        )
    return kind


def prepare_network(net: nn.Module, variant: str) -> nn.Module:
    """Apply a variant's memory layout or compilation to a plain network.

    With ``channels_last`` the input is converted after its noise is drawn, as the platform does:
    ``randn_like`` of an NHWC tensor fills it in memory order, which would be other noise.
    """
    if variant == "channels_last":
        net = net.to(memory_format=torch.channels_last)
    elif variant == "compile":
        net.compile()
    return net


def make_reference_step(
    cfg: DictConfig, problem: InverseProblem, net: nn.Module, z: Tensor, variant: str = "fp32"
) -> tuple[Callable[[], None], ReferenceState]:
    """One training step of the configured method as a closure over its state, and that state."""
    kind = method_kind(cfg)
    m = cfg.method
    net = prepare_network(net, variant)
    layout = torch.channels_last if variant == "channels_last" else torch.contiguous_format
    device = z.device
    if device.type == "cuda":  # as the platform's trainer sets it
        torch.backends.cudnn.benchmark = bool(cfg.trainer.get("benchmark", False))
    optimizer = build(m.optimizer)(params=net.parameters())
    noise = float(m.get("noise_scale", 0.0)) * float(m.optimizer.lr)
    std = float(m.input.perturbation_std)
    decay = float(m.ema_decay)
    truth, observation, operator = problem.ground_truth, problem.observation, problem.operator
    channels = problem.channels
    state = ReferenceState(ema=torch.zeros(1, channels, *problem.image_shape, device=device))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant == "bf16")

    seed = int(m.seed)
    torch.manual_seed(rank_seed(seed, 0))
    langevin = torch.Generator(device=device).manual_seed(seed * RANK_SEED_STRIDE + LANGEVIN_SEED_OFFSET)
    conv_weights = [mod.weight for mod in net.modules() if isinstance(mod, nn.modules.conv._ConvNd)]
    sample_sum = torch.zeros(1, channels, *problem.image_shape, dtype=torch.float64, device=device)
    sample_sq = torch.zeros_like(sample_sum)
    clamp = float(m.get("log_precision_clamp", 20.0))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        noisy_z = z + std * torch.randn_like(z) if std > 0 else z
        with autocast:
            output = net(noisy_z.contiguous(memory_format=layout))
            image = output[:, :channels]
            residual = operator(image) - observation
            if kind == "mcdropout":
                s = output[:, channels:].clamp(-clamp, clamp)
                if s.shape[-2:] != residual.shape[-2:]:
                    s = s.mean(dim=(-2, -1), keepdim=True)
                loss = (torch.exp(s) * residual.pow(2) - s).mean()
            else:
                loss = residual.pow(2).mean()
            if kind == "mfvi":
                loss = loss + float(m.kl_weight) * kl_divergence(net)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            if kind == "sgld":
                for weight in conv_weights:
                    weight.add_(torch.randn(weight.shape, generator=langevin, device=device), alpha=noise)
                burn_in, every = int(m.burn_in), int(m.sample_every)
                if state.steps >= burn_in and (state.steps - burn_in) % every == 0:
                    sample = image.detach().double()
                    sample_sum.add_(sample)
                    sample_sq.add_(sample.square())
            state.ema.mul_(decay).add_(image.detach().float(), alpha=1 - decay)
            if truth is not None:
                fast_psnr(image, truth)
                state.psnr = fast_psnr(state.ema / (1 - decay ** (state.steps + 1)), truth)
        state.steps += 1

    return step, state


def final_psnr(state: ReferenceState) -> float:
    """PSNR of the bias-corrected EMA after the last step (NaN without ground truth)."""
    return math.nan if state.psnr is None else float(state.psnr)
