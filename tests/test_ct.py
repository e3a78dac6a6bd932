"""Sparse-view CT on the platform: every method on task=ct, the FBP baseline, educated DIP.

All runs are 64x64 (preset=small) and a few steps long; the ray-transform matrices go to a
temporary cache shared by the whole module, so each geometry is built once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from dip_lightning.config import compose_config
from dip_lightning.data.synthetic_ct import SyntheticCTDataModule, SyntheticCTDataset
from dip_lightning.errors import ConfigError, InputFileError
from dip_lightning.job.run import build_method, build_problem, run
from dip_lightning.methods.edip import EducatedDIP, read_checkpoint, save_pretrained
from dip_lightning.models.skip import SkipNet
from dip_lightning.physics.ct_noise import PoissonLogNoise
from dip_lightning.physics.ct_system_matrix import CACHE_ENV_VAR
from dip_lightning.physics.noise import GaussianNoise
from dip_lightning.physics.ray_transform import RayTransform
from dip_lightning.pretrain import SupervisedPretraining, pretrain, random_crop
from dip_lightning.priors import TotalVariation
from tests.conftest import run_cli

FEW_STEPS = ("trainer.max_steps=3", "trainer.check_val_every_n_epoch=100")  # final evaluation only
TINY_PRETRAINING = (
    "pretrain.num_images=4",
    "pretrain.val_images=2",
    "pretrain.batch_size=2",
    "pretrain.max_steps=2",
)


@pytest.fixture(scope="module")
def ct_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray_transform_cache")


@pytest.fixture(autouse=True)
def _private_cache(ct_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """System matrices go to the module's temporary cache, never to the home directory."""
    monkeypatch.setenv(CACHE_ENV_VAR, str(ct_cache))


@pytest.fixture
def ct_config(small_config):
    def make(*overrides: str) -> DictConfig:
        return small_config("task=ct", *FEW_STEPS, *overrides)

    return make


def compose_pretrain(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/pretrain.yaml`` as `python -m dip_lightning.pretrain` would."""
    return compose_config(overrides, output_dir, config_name="pretrain")


def problem_beam(directory: Path) -> str:
    """The beam geometry the run actually used, from its saved config."""
    return OmegaConf.load(directory / "config.yaml").operator.beam


def outputs(cfg: DictConfig) -> tuple[Path, dict]:
    directory = Path(cfg.paths.output_dir)
    return directory, json.loads((directory / "metrics.json").read_text())


# ------------------------------------------------------------------------------------------
# Every method on task=ct, with the task's TV prior
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("dip", ("data=ct_small",)),
        pytest.param(
            "sgld", ("method.burn_in=1", "method.sample_every=1", "noise=ct_poisson"), marks=pytest.mark.long
        ),
        pytest.param(
            "mcdropout", ("regulariser.kind=isotropic", "operator=ray_transform_fan"), marks=pytest.mark.long
        ),
    ],
)
def test_each_method_runs_dip_tv_on_ct(ct_config, method, extra):
    cfg = ct_config(f"method={method}", *extra)
    run(cfg)
    directory, metrics = outputs(cfg)
    assert metrics["status"] == "completed" and metrics["steps"] == 3
    assert np.isfinite(metrics["psnr"])
    assert "TotalVariation" in (directory / "config.yaml").read_text()
    # The FBP baseline is saved and scored with every CT run.
    assert np.load(directory / "baseline.npy").shape == (1, 64, 64)
    assert metrics["baseline_psnr"] > 15.0
    assert np.load(directory / "observation.npy").shape[-2] == 60  # a sinogram with 60 angles
    # Its PNG spans the grey range instead of clipping the line integrals at 1 (a white block).
    sinogram_png = np.asarray(Image.open(directory / "observation.png"))
    assert sinogram_png.min() == 0 and sinogram_png.max() == 255 and (sinogram_png == 255).mean() < 0.05
    transform = json.loads((directory / "transform.json").read_text())
    assert transform["scale"] > 0
    if "operator=ray_transform_fan" in extra:
        assert cfg.operator.beam == "fan" and problem_beam(directory) == "fan"
    if "data=ct_small" in extra:
        # The DICOM slice is stretched from its own (HU) range, which the transform records.
        assert transform["scale"] > 100 and transform["offset"] < 0


def test_ct_task_defaults_and_prior_choice(ct_config):
    cfg = ct_config()
    assert cfg.operator.num_angles == 60 and cfg.noise.relative and cfg.noise.sigma == 0.05
    assert cfg.data.kind == "shepp_logan" and cfg.data.size == 64
    assert cfg.method.grad_clip == 1.0 and cfg.method.lr_schedule == "cosine"
    assert ct_config("method=edip").method.lr_schedule == "cosine"
    assert ct_config("method.lr_schedule=constant").method.lr_schedule == "constant"
    problem = build_problem(cfg)
    assert isinstance(problem.operator, RayTransform) and problem.image_shape == (64, 64)
    prior = build_method(cfg, problem).image_prior
    # The TV weight chosen on the tuning images (docs/ct.md), not on the phantoms of the table.
    assert isinstance(prior, TotalVariation) and prior.weight == 3e-3
    old = ct_config("regulariser.weight=3e-4")
    assert build_method(old, build_problem(old)).image_prior.weight == 3e-4
    # The task's TV default gives way to a prior chosen on the command line.
    plain = ct_config("regulariser=none")
    assert build_method(plain, build_problem(plain)).image_prior is None


def test_ct_and_ct_mfvi_settings(ct_config, small_config):
    # The task turns the input perturbation off for every method; conf/task_method/ct_mfvi.yaml
    # gives MFVI on CT a smaller initial posterior std. Neither leaks into other pairs.
    mfvi = ct_config("method=mfvi")
    assert mfvi.method.input.perturbation_std == 0.0 and mfvi.method.rho_init_mean == -5.0
    assert ct_config("method=dip").method.input.perturbation_std == 0.0
    denoising = small_config("task=denoising", "method=mfvi")
    assert denoising.method.input.perturbation_std == 0.1 and denoising.method.rho_init_mean == -3.0
    assert denoising.method.lr_schedule == "constant"
    # The command line still wins, and a search that switches the method gets the pair's settings.
    assert ct_config("method=mfvi", "method.rho_init_mean=-2").method.rho_init_mean == -2.0
    assert ct_config("hparams_search=mfvi_prior").method.rho_init_mean == -5.0


def test_fbp_baseline_is_accurate_on_shepp_logan(ct_config):
    problem = build_problem(ct_config())
    fbp = problem.operator.pseudo_inverse(problem.observation).clamp(0, 1)
    mse = float((fbp - problem.ground_truth).pow(2).mean())
    assert 10 * np.log10(1 / mse) > 22.0


def test_pseudo_inverse_network_input(ct_config):
    cfg = ct_config("method.input.kind=pseudo_inverse", "method.input.channels=2")
    problem = build_problem(cfg)
    method = build_method(cfg, problem)
    fbp = problem.operator.pseudo_inverse(problem.observation)
    assert method.net_input.shape == (1, 2, 64, 64)
    torch.testing.assert_close(method.net_input, fbp.repeat(1, 2, 1, 1))


# ------------------------------------------------------------------------------------------
# Educated DIP: pretraining, fine-tuning, checkpoint errors
# ------------------------------------------------------------------------------------------
def test_synthetic_pairs_are_seeded_fbp_and_phantom():
    operator = RayTransform((32, 32), num_angles=20)
    noise = GaussianNoise(0.05, relative=True)
    data = SyntheticCTDataset(operator, noise, length=3, seed_offset=5, noise_seed=7)
    fbp, phantom = data[1]
    again, same = data[1]
    assert fbp.shape == phantom.shape == (1, 32, 32)
    torch.testing.assert_close(fbp, again)
    torch.testing.assert_close(phantom, same)
    assert float(phantom.min()) >= 0.0 and float(phantom.max()) == pytest.approx(1.0)
    # The FBP is a noisy version of the phantom, not the phantom itself.
    error = float((fbp - phantom).pow(2).mean())
    assert 1e-5 < error < 0.05
    poisson = SyntheticCTDataset(operator, PoissonLogNoise(), length=1)
    assert torch.isfinite(poisson[0][0]).all()
    with pytest.raises(ConfigError, match="pretrain.batch_size"):
        SyntheticCTDataModule(operator, noise, 4, 2, batch_size=0, seed_offset=0)


def test_pretraining_then_educated_dip(tmp_path):
    checkpoint = tmp_path / "edip.pt"
    overrides = ["task=ct", "preset=small", "logger=none", f"method.checkpoint={checkpoint}"]
    summary = pretrain(compose_pretrain([*overrides, *TINY_PRETRAINING], tmp_path / "pretrain"))
    assert summary["steps"] == 2 and np.isfinite(summary["val_psnr"])
    _, record = read_checkpoint(checkpoint)
    assert record["in_channels"] == 1 and record["image_shape"] == [64, 64]

    cfg = compose_config([*overrides, "method=edip", *FEW_STEPS], tmp_path / "run")
    problem = build_problem(cfg)
    method = build_method(cfg, problem)
    assert isinstance(method, EducatedDIP) and method.pretraining["summary"]["steps"] == 2
    for name, value in method.net.state_dict().items():
        torch.testing.assert_close(value, record["state_dict"][name])
    fbp = problem.operator.pseudo_inverse(problem.observation)
    torch.testing.assert_close(method.net_input, fbp)  # FBP input, one channel
    assert cfg.method.optimizer.lr == 1e-4 and isinstance(method.image_prior, TotalVariation)

    run(cfg)
    _, metrics = outputs(cfg)
    assert metrics["status"] == "completed" and metrics["steps"] == 3


@pytest.mark.long
def test_pretraining_on_crops_checks_the_crop_size(tmp_path, monkeypatch):
    seen: list[tuple[int, ...]] = []
    original = SupervisedPretraining.forward

    def record(self, fbp):
        seen.append(tuple(fbp.shape[-2:]))
        return original(self, fbp)

    monkeypatch.setattr(SupervisedPretraining, "forward", record)
    overrides = ["task=ct", "preset=small", "logger=none", f"method.checkpoint={tmp_path / 'net.pt'}"]
    summary = pretrain(
        compose_pretrain([*overrides, *TINY_PRETRAINING, "pretrain.crop_size=32"], tmp_path / "a")
    )
    assert summary["steps"] == 2
    assert seen.count((32, 32)) == 2  # the two training batches
    assert (64, 64) in seen  # validation on whole images
    for bad in ("20", "8", "128", "0"):  # skip_tiny: multiples of 8, at least 16; image 64x64
        cfg = compose_pretrain([*overrides, *TINY_PRETRAINING, f"pretrain.crop_size={bad}"], tmp_path / bad)
        with pytest.raises(ConfigError, match="pretrain.crop_size"):
            pretrain(cfg)


def test_random_crop_cuts_the_same_window():
    image = torch.arange(64.0).reshape(1, 1, 8, 8)
    first, second = random_crop(4, image, image + 100)
    assert first.shape == (1, 1, 4, 4)
    torch.testing.assert_close(second, first + 100)


def test_default_checkpoint_path_names_task_and_model(ct_config):
    cfg = ct_config("method=edip")
    assert Path(cfg.method.checkpoint).name == "edip_ct_skip_tiny.pt"


@pytest.mark.parametrize("problem", ["missing", "directory", "text", "no_weights", "unset"])
def test_edip_checkpoint_errors_name_the_setting(ct_config, tmp_path, problem):
    path = tmp_path / "net.pt"
    error: type[Exception] = InputFileError
    if problem == "directory":
        path = tmp_path
    elif problem == "text":
        path.write_text("these are not network weights\n")
    elif problem == "no_weights":
        torch.save({"format": "something else", "numbers": [1, 2]}, path)
    elif problem == "unset":
        path, error = "null", ConfigError
    cfg = ct_config("method=edip", f"method.checkpoint={path}")
    with pytest.raises(error, match="method.checkpoint"):
        run(cfg)
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_edip_checkpoint_of_another_network_shape(ct_config, tmp_path):
    other = SkipNet(
        in_channels=1, out_channels=1, channels_down=[8, 8], channels_up=[8, 8], channels_skip=[2, 2]
    )
    save_pretrained(tmp_path / "other.pt", other)
    cfg = ct_config("method=edip", f"method.checkpoint={tmp_path / 'other.pt'}")
    with pytest.raises(ConfigError, match=r"method\.checkpoint.*another shape"):
        run(cfg)
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_pretraining_needs_a_checkpoint_path(tmp_path):
    cfg = compose_pretrain(["task=ct", "preset=small", "logger=none", "method.checkpoint=null"], tmp_path)
    with pytest.raises(ConfigError, match="method.checkpoint"):
        pretrain(cfg)


# ------------------------------------------------------------------------------------------
# The headline command
# ------------------------------------------------------------------------------------------
@pytest.mark.heavy
def test_headline_command_line(tmp_path):
    result = run_cli(
        ["task=ct", "method=mfvi", "preset=small", "logger=none", *FEW_STEPS],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "baseline (pseudo-inverse) PSNR" in result.stdout
    (metrics_file,) = tmp_path.glob("outputs/runs/ct/mfvi/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 3
    assert np.isfinite(metrics["psnr"]) and metrics["baseline_psnr"] > 15.0
    directory = metrics_file.parent
    assert (directory / "baseline.png").is_file() and np.load(directory / "baseline.npy").shape == (1, 64, 64)
    assert json.loads((directory / "transform.json").read_text()) == {
        "offset": 0.0,
        "scale": 1.0,
        "inverse": "raw = unit * scale + offset",
        "applies_to": ["reconstruction.npy", "baseline.npy", "ground_truth.npy"],
    }
    saved = OmegaConf.load(directory / "config.yaml")
    assert saved.regulariser.weight > 0 and saved.method.kl_weight > 0  # MFVI + TV
