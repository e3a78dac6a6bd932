"""Shared fixtures: composing the project's config in-process and running the CLI in a subprocess.

Test matrices take their methods, tasks and operators from ``conf/`` (:func:`config_options`), so
a new YAML file there is tested without editing a list here.
"""

from __future__ import annotations

import atexit
import copy
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from dip_lightning import config
from dip_lightning.config import CONFIG_DIR, compose_config
from dip_lightning.job import interrupt
from dip_lightning.physics.ray_transform import CACHE_ENV_VAR

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, torch.get_num_threads()))

# Two steps of real pretraining on two phantoms: enough for a checkpoint the platform accepts.
TINY_PRETRAINING = (
    "pretrain.num_images=4",
    "pretrain.val_images=2",
    "pretrain.batch_size=2",
    "pretrain.max_steps=2",
)


# What a few-step test run of a method needs beyond its defaults: the linearised DIP's work after
# training (2000 hyperparameter steps, a rank-200 Jacobian) is sized for real runs.
QUICK_METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    "lin_dip": (
        "method.covariance=sampling",
        "method.mll.iterations=3",
        "method.predcp.num_samples=4",
        "method.sampling.rank=10",
        "method.sampling.cg_max_iter=5",
    ),
}


def config_options(group: str) -> list[str]:
    """The options of a config group, the names of ``conf/<group>/*.yaml``, sorted."""
    options = sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))
    if not options:
        raise FileNotFoundError(f"no options in {CONFIG_DIR / group}")
    return options


# Method x task pairs a method refuses by design, and why (each refusal is tested beside the method).
NOT_APPLICABLE = {
    ("gp", "phase_retrieval"): "exact GP regression needs a linear operator (tests/test_gp_method.py)",
    ("gp", "blind_deblurring"): "exact GP regression needs a fixed operator (tests/test_gp_method.py)",
    (
        "lin_dip",
        "phase_retrieval",
    ): "the linearised posterior needs a linear operator (tests/test_lin_dip.py)",
}


def trains_network(method: str) -> bool:
    """Whether ``conf/method/<method>.yaml`` builds a method that takes training steps (its class
    declares ``trains_network``; False for a closed-form method such as ``method=gp``)."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    target = OmegaConf.load(CONFIG_DIR / "method" / f"{method}.yaml")["_target_"]
    return bool(get_class(str(target)).trains_network)


@functools.cache
def edip_checkpoint() -> Path:
    """A pretrained network for ``method=edip`` at ``preset=small`` (the tiny network, one channel).

    Built once per test session, on first use, by ``pretrain`` as ``python -m
    dip_lightning.pretrain`` runs it (two steps on denoising phantoms). The network's weights do not
    depend on the image size or the operator, so the one file serves every task of the small preset.
    """
    from dip_lightning.pretrain import pretrain

    directory = Path(tempfile.mkdtemp(prefix="edip_checkpoint_"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = directory / "edip.pt"
    overrides = ["task=denoising", "preset=small", "logger=none", f"method.checkpoint={path}"]
    pretrain(compose_config([*overrides, *TINY_PRETRAINING], directory / "run", config_name="pretrain"))
    return path


@pytest.fixture(scope="session", autouse=True)
def _ray_transform_cache(tmp_path_factory: pytest.TempPathFactory):
    """CT system matrices built by tests (and their subprocesses) go to one temporary directory,
    never to the user's cache; a test or module that sets its own directory still wins."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV_VAR, str(tmp_path_factory.mktemp("ray_transform_cache")))
        yield


HYDRA_COMPOSE = config.compose


@functools.cache
def _composed(config_name: str, overrides: tuple[str, ...], return_hydra_config: bool) -> DictConfig:
    return HYDRA_COMPOSE(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def cached_compose(
    config_name: str, overrides: list[str] | None = None, return_hydra_config: bool = False
) -> DictConfig:
    """Hydra's ``compose`` for :func:`dip_lightning.config.compose_config`, each set of overrides
    composed once per test session and copied (composing takes about 0.4 s, a copy 0.02 s).

    The conf directory does not change during a session, and interpolations (``oc.env``,
    ``hydra:``) stay unresolved in the copy, so a copy is what a fresh composition would give;
    test_config.py checks that. An override that fails raises each time (errors are not cached).
    """
    return copy.deepcopy(_composed(config_name, tuple(overrides or ()), return_hydra_config))


@pytest.fixture(scope="session", autouse=True)
def _compose_once():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "compose", cached_compose)
        yield


@pytest.fixture
def small_config(tmp_path):
    """Compose the small preset with no logger, writing into tmp_path."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(["preset=small", "logger=none", *overrides], tmp_path)

    return make


@pytest.fixture
def signal_handlers():
    """The command line's SIGINT/SIGTERM handling in this process, undone afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in interrupt.HANDLED_SIGNALS}
    interrupt.reset()
    interrupt.install()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    interrupt.reset()


def cli_env(cwd: Path) -> dict[str, str]:
    """The environment of a `launch.py` subprocess writing under ``cwd``, W&B offline."""
    env = dict(os.environ)
    env.update(
        {
            "DIP_LIGHTNING_ROOT": str(cwd),
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "OMP_NUM_THREADS": "2",
            "HYDRA_FULL_ERROR": "0",
        }
    )
    return env


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python launch.py <args>` with outputs under ``cwd``."""
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=cwd,
        env=cli_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread: on a shared machine two threads per process can be far slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
