"""Run-level settings no run can use are refused before anything is built, naming the setting."""

from __future__ import annotations

import pytest

from dip_lightning.errors import ConfigError
from dip_lightning.job.run import run


@pytest.mark.parametrize(
    ("override", "setting", "allowed"),
    [
        ("trainer.max_steps=0", "trainer.max_steps", "integer >= 1 or -1"),
        ("trainer.max_steps=-5", "trainer.max_steps", "integer >= 1 or -1"),
        ("trainer.max_steps=1.5", "trainer.max_steps", "integer >= 1"),
        ("trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch", "integer >= 1"),
        ("num_threads=0", "num_threads", "integer >= 1 or null"),
        ("seed=abc", "seed", "integer >= 0"),
        ("observation_seed=-1", "observation_seed", "integer >= 0"),
        ("checkpoint.every_n_steps=-1", "checkpoint.every_n_steps", "integer >= 0"),
        ("checkpoint.every_n_steps=2.5", "checkpoint.every_n_steps", "integer >= 0"),
        ("trainer.devices=0", "trainer.devices", "Lightning does not accept it"),
        ("trainer.precision=half", "trainer.precision", "Allowed precision values"),
        ("method.optimizer.lr=inf", "method.optimizer.lr", r"number >= 0 \(finite\)"),
    ],
)
def test_bad_run_settings_fail_before_training(small_config, tmp_path, override, setting, allowed):
    with pytest.raises(ConfigError, match=allowed) as info:
        run(small_config(override))
    assert info.value.setting == setting
    assert str(info.value).startswith(f"Invalid setting {setting}=")
    assert not (tmp_path / "metrics.json").exists()
