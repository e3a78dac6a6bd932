"""How the network runs, as opposed to what it is: channels-last memory layout and torch.compile.

Both are switches of the ``model`` group (``model.channels_last``, ``model.compile``) but not
arguments of the network classes: :func:`architecture` strips them before the network factory is
built, and :func:`accelerate` applies them to the finished network (after replicas are stacked, for
instance, so that the compiled module is the one that trains). Neither changes the weights' names,
so checkpoints load either way.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dip_lightning.errors import ConfigError

EXECUTION_KEYS: tuple[str, ...] = ("channels_last", "compile")


def architecture(model_cfg: DictConfig) -> DictConfig:
    """The ``model`` config without the execution switches: what the network class is built from."""
    container = OmegaConf.to_container(model_cfg, resolve=True)
    assert isinstance(container, dict)
    return OmegaConf.create({k: v for k, v in container.items() if k not in EXECUTION_KEYS})


def execution_settings(model_cfg: DictConfig) -> dict[str, bool]:
    """``channels_last`` and ``compile`` from the ``model`` config (False where absent)."""
    settings = {}
    for key in EXECUTION_KEYS:
        value = model_cfg.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(f"model.{key}", value, "must be true or false")
        settings[key] = value
    return settings


def _channels_last_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: hand the network its input in channels-last layout (free if it already is)."""
    first, *rest = args
    if isinstance(first, Tensor) and first.dim() == 4:
        first = first.contiguous(memory_format=torch.channels_last)
    return (first, *rest)


def accelerate(net: nn.Module, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """Apply the execution switches to ``net`` in place and return it.

    ``channels_last`` stores the 4-D weights as NHWC and converts the input on every call (tensor
    cores and cuDNN prefer that layout; on a CPU it is usually slower). ``compile`` wraps the
    module's forward in ``torch.compile`` (``nn.Module.compile``), which keeps parameter names, so
    state dicts and checkpoints are unchanged; the first steps pay for compilation.
    """
    if channels_last:
        net.to(memory_format=torch.channels_last)
        net.register_forward_pre_hook(_channels_last_input)
    if compile:
        net.compile()
    return net
