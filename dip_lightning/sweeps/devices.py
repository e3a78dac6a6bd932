"""Placing parallel trials on one machine: a GPU each, and a fair share of the CPU threads.

With ``hydra/launcher=joblib`` several trials run at once in worker processes of one machine.
Left alone, every trial would train on GPU 0 and every trial would start as many CPU threads as
there are cores (oversubscription makes each step many times slower). Launchers that give each
job its own GPU (Slurm with one GPU per job, Ray with ``num_gpus: 1``) show the job a single
device, so nothing is changed there.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig, open_dict

from dip_lightning.errors import check_choice

log = logging.getLogger(__name__)

GPU_ASSIGNMENTS = ("round_robin", "none")
GPU_ACCELERATORS = ("gpu", "cuda", "auto")


def round_robin_device(job_num: int, device_count: int) -> int:
    """The GPU index of job ``job_num``: jobs 0, 1, ... cycle over the ``device_count`` GPUs."""
    if device_count < 1:
        raise ValueError(f"device_count must be >= 1, got {device_count}")
    return int(job_num) % int(device_count)


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def assign_gpu(cfg: DictConfig, job_num: int | None, device_count: int | None = None) -> int | None:
    """Pin this trial to one GPU (``trainer.devices=[k]``) when several are visible.

    Only single-device GPU trainers of a multirun job are changed (``job_num`` is None outside a
    multirun); a trainer already given a device list, or one using several devices (DDP), is
    left as configured. Returns the chosen GPU index, or None when nothing was changed.
    """
    mode = str(cfg.get("gpu_assignment") or "none")
    check_choice("gpu_assignment", mode, GPU_ASSIGNMENTS)
    trainer = cfg.get("trainer") or {}
    if mode == "none" or job_num is None:
        return None
    if str(trainer.get("accelerator")) not in GPU_ACCELERATORS or trainer.get("devices") not in (1, "1"):
        return None
    count = cuda_device_count() if device_count is None else device_count
    if count <= 1:
        return None
    index = round_robin_device(job_num, count)
    with open_dict(cfg):
        cfg.trainer.devices = [index]
        if str(trainer.get("accelerator")) == "auto":
            cfg.trainer.accelerator = "gpu"
    log.info("Job %d runs on GPU %d of %d (gpu_assignment=round_robin).", job_num, index, count)
    return index


def parallel_jobs(launcher_cfg: Any) -> int:
    """How many jobs the launcher runs at once on this machine: its ``n_jobs`` (joblib's
    setting), 1 for a launcher without one."""
    if launcher_cfg is None or launcher_cfg.get("n_jobs") is None:
        return 1
    n_jobs = int(launcher_cfg.get("n_jobs") or 1)
    cpus = os.cpu_count() or 1
    # joblib's convention: -1 means all CPUs, -2 all but one, ...
    return max(1, cpus + 1 + n_jobs if n_jobs < 0 else n_jobs)


def share_threads(cfg: DictConfig, launcher_cfg: Any) -> int | None:
    """With ``num_threads: null``, give each parallel trial cores // parallel_jobs torch threads."""
    if cfg.get("num_threads"):
        return None
    jobs = parallel_jobs(launcher_cfg)
    if jobs <= 1:
        return None
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with open_dict(cfg):
        cfg.num_threads = threads
    return threads
