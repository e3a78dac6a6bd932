"""A file a component cannot use is reported under the setting that gave it, as
``<config group>.<parameter>``, without the job knowing any component's parameter names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from dip_lightning.errors import InputFileError
from dip_lightning.job.run import build_problem, setting_holding
from dip_lightning.physics.identity import Identity
from dip_lightning.physics.noise import GaussianNoise


class KernelFromFile(Identity):
    """An operator that reads a file and names its own parameter when it cannot use it."""

    def __init__(self, image_shape: tuple[int, int], kernel_path: str) -> None:
        super().__init__(image_shape)
        if not Path(kernel_path).is_file():
            raise InputFileError(kernel_path, "no such file", setting="kernel_path")


class NoiseFromTable(GaussianNoise):
    """A noise model that reads a file but does not say which of its settings named it."""

    def __init__(self, table: str, sigma: float = 0.1) -> None:
        super().__init__(sigma)
        values = np.load(table)
        if not np.isfinite(values).all():
            raise InputFileError(Path(table), "the table holds NaN values")


def test_in_group_prefixes_the_components_parameter() -> None:
    error = InputFileError("k.npy", "no such file", setting="kernel_path")
    named = error.in_group("operator")
    assert named.setting == "operator.kernel_path" and named.path == "k.npy"
    assert "(set by operator.kernel_path)" in str(named)
    assert InputFileError("k.npy", "bad").in_group("noise", "table").setting == "noise.table"
    assert InputFileError("k.npy", "bad").in_group("data").setting == "data"
    already = InputFileError("k.npy", "bad", setting="data.path")
    assert already.in_group("data") is already


def test_setting_holding_finds_the_key_by_its_file(tmp_path) -> None:
    settings = OmegaConf.create({"name": "x", "table": str(tmp_path / "t.npy"), "size": 3})
    assert setting_holding(settings, tmp_path / "t.npy") == "table"
    assert setting_holding(settings, tmp_path / "other.npy") is None


def test_operator_file_error_names_the_operator_parameter(small_config, tmp_path) -> None:
    cfg = small_config("data.size=32")
    missing = tmp_path / "kernel.npy"
    cfg.operator = OmegaConf.create(
        {"_target_": f"{__name__}.KernelFromFile", "_partial_": True, "kernel_path": str(missing)}
    )
    with pytest.raises(InputFileError, match="no such file") as info:
        build_problem(cfg)
    assert info.value.setting == "operator.kernel_path"
    assert f"'{missing}' (set by operator.kernel_path)" in str(info.value)


def test_noise_file_error_is_traced_to_its_setting(small_config, tmp_path) -> None:
    table = tmp_path / "table.npy"
    np.save(table, np.array([1.0, np.nan]))
    cfg = small_config("data.size=32")
    cfg.noise = OmegaConf.create({"_target_": f"{__name__}.NoiseFromTable", "table": str(table)})
    with pytest.raises(InputFileError, match="NaN") as info:
        build_problem(cfg)
    assert info.value.setting == "noise.table"


def test_mask_file_error_of_the_operator_itself(tmp_path) -> None:
    from dip_lightning.physics.inpainting import Inpainting

    with pytest.raises(InputFileError) as info:
        Inpainting((8, 8), kind="file", mask_path=str(tmp_path / "none.png"))
    assert info.value.setting == "mask_path"  # its own parameter; the job adds "operator."
    assert info.value.in_group("operator").setting == "operator.mask_path"
