"""Execution switches (channels-last, torch.compile, bf16) and the per-step logging cut.

Compiling on a CPU takes minutes, so the compile switch is checked without running the network.
"""

from __future__ import annotations

import csv

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from dip_lightning.config import build
from dip_lightning.data.datamodule import SingleObservationDataModule
from dip_lightning.errors import ConfigError
from dip_lightning.job.run import build_method, build_problem
from dip_lightning.models.acceleration import architecture, execution_settings

TINY = ("data.size=32", "method.num_samples=2")


def fit(cfg, steps: int, **trainer_kwargs):
    pl.seed_everything(int(cfg.seed), verbose=False)
    method = build_method(cfg, build_problem(cfg))
    options = {"logger": False, "callbacks": [], "limit_val_batches": 0, **trainer_kwargs}
    trainer = build(cfg.trainer, max_steps=steps, **options)
    trainer.fit(method, datamodule=SingleObservationDataModule())
    return method


def test_architecture_leaves_the_execution_switches_out(small_config):
    cfg = small_config("model.channels_last=true")
    assert "channels_last" not in architecture(cfg.model) and "compile" not in architecture(cfg.model)
    assert execution_settings(cfg.model) == {"channels_last": True, "compile": False}
    with pytest.raises(ConfigError, match="model.compile"):
        execution_settings(small_config("model.compile=3").model)


def test_channels_last_computes_the_same_network(small_config):
    # One step: the output EMA is then the first output, before Adam can amplify rounding differences.
    plain = fit(small_config(*TINY), steps=1)
    nhwc = fit(small_config(*TINY, "model.channels_last=true"), steps=1)
    weights = [p for p in nhwc.net.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    torch.testing.assert_close(nhwc.trajectory.ema.value, plain.trajectory.ema.value, atol=1e-5, rtol=0)


@pytest.mark.long
def test_compile_wraps_the_network_and_keeps_its_weight_names(small_config):
    plain = build_method(small_config(*TINY), build_problem(small_config(*TINY)))
    cfg = small_config(*TINY, "model.compile=true", "method=mfvi", "method.replicates=2")
    compiled = build_method(cfg, build_problem(cfg))
    assert compiled.net._compiled_call_impl is not None
    assert plain.net._compiled_call_impl is None
    names = {k.replace(".layer.", ".") for k in compiled.net.state_dict()}
    assert "_orig_mod" not in "".join(names)


def test_bf16_mixed_precision_trains_on_the_cpu(small_config):
    method = fit(small_config(*TINY, "trainer.precision=bf16-mixed"), steps=3)
    assert method.trajectory.ema.value.dtype == torch.float32
    assert torch.isfinite(torch.stack(method.trajectory.psnr_history)).all()


def test_step_scalars_are_logged_only_on_logging_steps(small_config, tmp_path):
    cfg = small_config(*TINY, "trainer.log_every_n_steps=5")
    method = fit(cfg, steps=12, logger=CSVLogger(tmp_path, name="csv"))
    with open(next(tmp_path.rglob("metrics.csv"))) as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/psnr")]
    assert steps == [4, 9]
    # the last step's values are still there for callbacks
    assert set(method.trainer.callback_metrics) >= {"train/loss", "train/psnr", "train/misfit"}
