"""In-process runs of the job function: quality, outputs, divergence and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dip_lightning.errors import ConfigError, InputFileError
from dip_lightning.job.run import run


def read_metrics(cfg) -> dict:
    from pathlib import Path

    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


@pytest.mark.long
def test_denoising_beats_the_noisy_observation(small_config):
    cfg = small_config("trainer.max_steps=120", "method.reconstruction=last", "method.optimizer.lr=0.02")
    objective = run(cfg)
    metrics = read_metrics(cfg)
    # The noisy observation (clipped to [0, 1]) is the baseline; DIP must clearly beat it.
    assert metrics["psnr"] >= metrics["baseline_psnr"] + 2.0, metrics
    assert objective == pytest.approx(metrics["psnr"])


def test_divergence_stops_keeps_outputs_and_returns_penalty(small_config, tmp_path):
    cfg = small_config("++regulariser={_target_:tests.divergence.NaNAfter,steps:15}", "trainer.max_steps=60")
    objective = run(cfg)
    metrics = read_metrics(cfg)
    assert metrics["status"] == "diverged"
    assert "step 15" in metrics["reason"]
    assert objective == -1000.0
    reconstruction = np.load(tmp_path / "reconstruction.npy")
    assert np.isfinite(reconstruction).all() and reconstruction.std() > 0


def test_divergence_seen_late_still_reports_a_finite_image(small_config, tmp_path):
    # The weights turn NaN at step 16; with a check every 5 steps the divergence is seen at step 20,
    # after NaN outputs reached the EMA: the output of peak PSNR is reported instead.
    cfg = small_config(
        "++regulariser={_target_:tests.divergence.NaNGradientAfter,steps:16}",
        "method.divergence_check_every=5",
        "trainer.max_steps=60",
    )
    assert run(cfg) == -1000.0
    metrics = read_metrics(cfg)
    assert metrics["status"] == "diverged" and metrics["steps"] == 20
    assert metrics["reason"] == "Training diverged at step 20: the loss became NaN or infinite."
    assert metrics["reconstruction_source"] == "peak_before_divergence"
    reconstruction = np.load(tmp_path / "reconstruction.npy")
    assert np.isfinite(reconstruction).all() and reconstruction.std() > 0


def test_missing_image_file(small_config, tmp_path):
    cfg = small_config("data=file", f"data.path={tmp_path / 'nope.png'}")
    with pytest.raises(InputFileError, match="nope.png"):
        run(cfg)
    assert not (tmp_path / "metrics.json").exists()


def test_unknown_file_type(small_config, tmp_path):
    (tmp_path / "scan.xyz").write_bytes(b"12345")
    with pytest.raises(InputFileError, match=r"scan\.xyz"):
        run(small_config("data=file", f"data.path={tmp_path / 'scan.xyz'}"))


def test_image_smaller_than_the_network_allows(small_config, tmp_path):
    Image.fromarray(np.arange(144, dtype=np.uint8).reshape(12, 12)).save(tmp_path / "tiny.png")
    with pytest.raises(ConfigError, match="tiny.png"):
        run(small_config("data=file", f"data.path={tmp_path / 'tiny.png'}", "data.size=null"))


def test_size_not_divisible_is_cropped_with_a_warning(small_config, tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((70, 75)) * 255).astype(np.uint8)).save(tmp_path / "odd.png")
    cfg = small_config(
        "data=file", f"data.path={tmp_path / 'odd.png'}", "data.size=null", "trainer.max_steps=2"
    )
    with pytest.warns(UserWarning, match="70x75 to 64x72"):
        run(cfg)
    assert np.load(tmp_path / "reconstruction.npy").shape == (1, 64, 72)


def test_size_policy_error_refuses(small_config, tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((70, 75)) * 255).astype(np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ConfigError, match="size_policy"):
        run(
            small_config(
                "data=file", f"data.path={tmp_path / 'odd.png'}", "data.size=null", "size_policy=error"
            )
        )


def test_mask_of_the_wrong_size(small_config, tmp_path):
    Image.fromarray(np.full((32, 48), 255, np.uint8)).save(tmp_path / "mask.png")
    overrides = ["task=inpainting", "operator.kind=file", f"operator.mask_path={tmp_path / 'mask.png'}"]
    with pytest.raises(ConfigError, match="32x48"):
        run(small_config(*overrides))


def test_mask_file_is_used_for_inpainting(small_config, tmp_path):
    mask = np.full((64, 64), 255, np.uint8)
    mask[20:40, 10:50] = 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    overrides = ["task=inpainting", "operator.kind=file", f"operator.mask_path={tmp_path / 'mask.png'}"]
    run(small_config(*overrides, "trainer.max_steps=2"))
    observation = np.load(tmp_path / "observation.npy")
    assert (observation[:, 20:40, 10:50] == 0).all() and (observation[:, :20] != 0).any()


def test_negative_noise_level(small_config):
    with pytest.raises(ConfigError, match="noise.sigma"):
        run(small_config("noise.sigma=-0.1"))


def test_factor_that_does_not_divide_the_size(small_config):
    with pytest.raises(ConfigError, match="operator.factor"):
        # A two-scale network takes 68x68 (a multiple of 4), but 8 does not divide 68.
        two_scales = ["model.channels_down=[16,16]", "model.channels_up=[16,16]", "model.channels_skip=[4,4]"]
        run(small_config("task=super_resolution", "operator.factor=8", "data.size=68", *two_scales))


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ("method.ema_decay=1.5", "method.ema_decay"),
        ("method.input.kind=sinogram", "method.input.kind"),
        ("method.likelihood=laplace", "method.likelihood"),
    ],
)
def test_bad_method_settings(small_config, override, setting):
    with pytest.raises(ConfigError, match=setting):
        run(small_config(override))
