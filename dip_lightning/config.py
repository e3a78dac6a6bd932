"""Instantiating config nodes so that user-facing errors stay readable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from dip_lightning.errors import DipError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


def build(node: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising our own errors instead of Hydra's wrapper.

    Hydra wraps every exception raised by a ``_target_`` in an InstantiationException whose
    message is a stack of reprs; a setting or file error is clearer as it was raised.
    """
    try:
        return instantiate(node, *args, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while cause is not None and not isinstance(cause, DipError):
            cause = cause.__cause__
        if isinstance(cause, DipError):
            raise cause from None
        raise


def compose_config(overrides: list[str], output_dir: str | Path, config_name: str = "config") -> DictConfig:
    """Compose the root config as ``launch.py`` would, outside a Hydra app, with its run directory.

    For tests, benchmarks and notebooks: interpolations such as ``${hydra:runtime.choices.task}``
    resolve because the Hydra config is registered, and results go to ``output_dir``.
    ``config_name="pretrain"`` composes the educated-DIP pretraining config instead.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
