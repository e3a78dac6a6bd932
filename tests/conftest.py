"""Shared fixtures: composing the project's config in-process and running the CLI in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from dip_lightning.config import compose_config
from dip_lightning.job import interrupt

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, torch.get_num_threads()))


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
