"""Deblurring operators: kernels, the known-kernel blur, the blind blur with a fitted kernel, and
the generic pieces they use (optimiser groups, the multistep schedule, the loss switch, shift-aligned
metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dip_lightning.errors import ConfigError, InputFileError
from dip_lightning.job.run import build_method, build_problem, run
from dip_lightning.methods.fidelity import FidelitySwitch, ssim_loss
from dip_lightning.methods.optimisation import LrSchedule
from dip_lightning.metrics.alignment import aligned_metrics, best_shift, kernel_psnr
from dip_lightning.physics.blind_blur import BlindBlur
from dip_lightning.physics.blur import Blur
from dip_lightning.physics.checks import adjoint_relative_error
from dip_lightning.physics.kernels import make_kernel, motion_kernel, read_kernel_file
from dip_lightning.physics.noise import GaussianNoise
from dip_lightning.physics.observation import make_observation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KINDS = ("motion", "gaussian", "disk")
BOUNDARIES = ("valid", "circular")
SMALL = ("data.size=32", "operator.kernel_size=5", "trainer.max_steps=6", "stopping=fixed")


# ---------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [1, 5, 13])
def test_kernels_are_non_negative_odd_squares_that_sum_to_one(kind, size):
    kernel = make_kernel(kind, size, seed=3)
    assert kernel.shape == (size, size) and kernel.dtype == torch.float64
    assert bool((kernel >= 0).all())
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-12)


def test_motion_kernels_are_seeded_and_spread_over_their_support():
    first, again, other = motion_kernel(13, 5), motion_kernel(13, 5), motion_kernel(13, 6)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    rows, cols = torch.nonzero(first > 0, as_tuple=True)
    span = max(int(rows.max() - rows.min()), int(cols.max() - cols.min()))
    assert span >= 8  # extent 0.8 of a 13 px side, centred: a real stroke, not a dot
    assert int(rows.min()) + int(rows.max()) in (11, 12, 13)  # the bounding box is centred


def test_gaussian_and_disk_kernels_are_symmetric():
    for kernel in (make_kernel("gaussian", 7, gaussian_sigma=1.5), make_kernel("disk", 7)):
        assert torch.allclose(kernel, kernel.flip(0)) and torch.allclose(kernel, kernel.T)


@pytest.mark.parametrize(
    ("call", "setting"),
    [
        (lambda: make_kernel("box", 5), "operator.kernel"),
        (lambda: make_kernel("motion", 4), "operator.kernel_size"),
        (lambda: make_kernel("gaussian", 0), "operator.kernel_size"),
        (lambda: make_kernel("gaussian", 5, gaussian_sigma=0), "operator.gaussian_sigma"),
        (lambda: make_kernel("file", 5), "operator.kernel_path"),
        (lambda: Blur(boundary="reflect"), "operator.boundary"),
        (lambda: Blur(baseline="tv"), "operator.baseline"),
        (lambda: Blur(kernel_size=13, image_shape=(12, 40)), "operator.kernel_size"),
        (lambda: BlindBlur(kernel_size=7, estimate_size=5), "operator.estimate_size"),
        (lambda: BlindBlur(kernel_size=5, estimate_size=15, image_shape=(14, 14)), "operator.estimate_size"),
    ],
)
def test_bad_kernel_settings_name_the_setting(call, setting):
    with pytest.raises(ConfigError) as info:
        call()
    assert info.value.setting == setting


def test_kernel_files_are_read_and_normalised(tmp_path):
    array = np.zeros((5, 5))
    array[2, 1:4] = [1, 2, 1]
    np.save(tmp_path / "k.npy", array)
    Image.fromarray((array * 100).astype(np.uint8)).save(tmp_path / "k.png")
    for name in ("k.npy", "k.png"):
        kernel = read_kernel_file(tmp_path / name)
        assert float(kernel.sum()) == pytest.approx(1.0) and kernel[2, 2] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.ones((4, 4)), "odd side"),
        (np.ones((3, 5)), "square"),
        (-np.ones((3, 3)), "non-negative"),
        (np.zeros((3, 3)), "sums to zero"),
        (np.ones((2, 3, 3, 3)), "2-D"),
    ],
)
def test_unusable_kernel_files_are_refused(tmp_path, array, words):
    np.save(tmp_path / "k.npy", array)
    with pytest.raises(InputFileError, match=words) as info:
        read_kernel_file(tmp_path / "k.npy")
    assert info.value.setting == "kernel_path"


def test_a_missing_kernel_file_names_the_operator_setting(small_config, tmp_path):
    cfg = small_config(
        "task=deblurring", "operator.kernel=file", f"operator.kernel_path={tmp_path / 'no.npy'}"
    )
    with pytest.raises(InputFileError, match="no such file") as info:
        build_problem(cfg)
    assert info.value.setting == "operator.kernel_path"


# ---------------------------------------------------------------------------------- operators
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("kind", KINDS)
def test_blur_adjoint_identity(boundary, kind):
    assert adjoint_relative_error(Blur(kernel=kind, kernel_size=7, boundary=boundary), (20, 24)) < 1e-10


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_blind_blur_adjoint_identity_holds_for_the_current_estimate(boundary):
    operator = BlindBlur(kernel_size=5, estimate_size=7, boundary=boundary)
    assert adjoint_relative_error(operator, (20, 24)) < 1e-10


@pytest.mark.parametrize(("boundary", "shape"), [("valid", (1, 2, 22, 30)), ("circular", (1, 2, 32, 40))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(boundary, shape, dtype):
    operator = Blur(kernel_size=11, boundary=boundary, baseline="blurry")
    x = torch.rand(1, 2, 32, 40, dtype=dtype)
    y = operator(x)
    assert y.shape == shape and y.dtype == dtype
    assert operator.adjoint(y).shape == x.shape and operator.adjoint(y).dtype == dtype
    assert operator.pseudo_inverse(y).shape == x.shape
    assert operator.measurement_shape((32, 40), 2) == shape[1:]


def test_blur_is_a_true_convolution_with_the_kernel():
    kernel = torch.zeros(3, 3, dtype=torch.float64)
    kernel[0, 2] = 1.0  # a point spread one pixel up and right
    operator = Blur(kernel="gaussian", kernel_size=3, boundary="circular")
    operator.kernel = kernel
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    x[..., 4, 4] = 1
    assert operator(x)[0, 0, 3, 5] == 1  # the image of a point is the kernel, drawn as it is


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_propagate_variance_is_the_squared_operator(boundary):
    operator = Blur(kernel_size=5, boundary=boundary)
    basis = torch.eye(12 * 12, dtype=torch.float64).view(-1, 1, 12, 12)
    matrix = operator(basis).flatten(1)  # row j: A applied to pixel j
    variance = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    exact = (matrix.square() * variance.flatten()[:, None]).sum(0)
    assert torch.allclose(operator.propagate_variance(variance).flatten(), exact)


def test_circular_wiener_undoes_a_blur_without_noise():
    operator = Blur(
        kernel="gaussian", kernel_size=5, gaussian_sigma=0.6, boundary="circular", wiener_nsr=1e-10
    )
    x = torch.rand(1, 1, 24, 24, dtype=torch.float64)
    assert torch.allclose(operator.pseudo_inverse(operator(x)), x, atol=1e-5)


def test_valid_wiener_beats_the_blurry_image_on_a_smooth_image():
    rows, cols = torch.meshgrid(torch.linspace(0, 3, 40), torch.linspace(0, 3, 40), indexing="ij")
    x = (0.5 + 0.4 * torch.sin(rows * 2) * torch.cos(cols * 3))[None, None].double()
    operator = Blur(kernel="disk", kernel_size=7, wiener_nsr=1e-4)
    y = operator(x)
    wiener = (operator.pseudo_inverse(y) - x).square().mean()
    blurry = (operator.blurry_image(y) - x).square().mean()
    assert wiener < 0.5 * blurry


def test_the_blind_operator_measures_with_the_true_kernel_and_fits_with_its_estimate():
    blind = BlindBlur(kernel_size=5, kernel_seed=4)
    known = Blur(kernel_size=5, kernel_seed=4)
    x = torch.rand(1, 1, 24, 24)
    torch.testing.assert_close(blind.simulate(x), known(x))
    estimate = blind.current_kernel()
    estimate = estimate.detach()
    assert bool((estimate >= 0).all()) and float(estimate.sum()) == pytest.approx(1.0, abs=1e-5)
    assert not torch.allclose(blind(x), known(x), atol=1e-3)
    observation = make_observation(x[0], blind, GaussianNoise(0.0, clip=False), seed=0).observation
    torch.testing.assert_close(observation, known(x))
    assert blind.operator_metrics()["kernel_psnr"] < kernel_psnr(known.kernel, known.kernel)
    group = blind.optimizer_groups()[0]
    assert group["lr"] == 1e-4 and len(group["params"]) == 4


def test_a_larger_estimate_measures_the_valid_region_of_its_own_size():
    blind = BlindBlur(kernel_size=5, estimate_size=9)
    x = torch.rand(1, 1, 24, 24)
    assert blind.simulate(x).shape == blind(x).shape == (1, 1, 16, 16)
    torch.testing.assert_close(blind.simulate(x), Blur(kernel_size=5)(x)[..., 2:-2, 2:-2])


# ---------------------------------------------------------------------------------- metrics
def test_aligned_metrics_find_the_shift_of_a_shifted_image():
    truth = torch.rand(1, 1, 32, 32)
    shifted = torch.roll(truth, shifts=(2, -1), dims=(-2, -1))
    assert best_shift(shifted, truth, 3) == (2, -1)
    metrics = aligned_metrics(shifted, truth, 3)
    assert metrics["psnr_aligned"] == float("inf") and metrics["ssim_aligned"] == pytest.approx(1.0)
    assert (metrics["shift_rows"], metrics["shift_cols"]) == (2, -1)


def test_kernel_psnr_forgives_a_shift_and_punishes_a_wrong_kernel():
    kernel = motion_kernel(9, 1)
    shifted = torch.roll(torch.nn.functional.pad(kernel, (1, 1, 1, 1)), 1, dims=0)[1:-1, 1:-1]
    assert kernel_psnr(shifted, kernel) > 30
    assert kernel_psnr(make_kernel("gaussian", 9), kernel) < 25


# ---------------------------------------------------------------------------- generic method parts
def test_multistep_milestones_are_fractions_of_the_budget():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [parameter]}], lr=1.0)
    scheduler = LrSchedule("multistep", [0.4, 0.6, 0.8], 0.5).scheduler(optimizer, 10)["scheduler"]
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == [1.0] * 4 + [0.5] * 2 + [0.25] * 2 + [0.125] * 2


@pytest.mark.parametrize(
    ("settings", "setting"),
    [
        ({"kind": "multistep"}, "method.lr_milestones"),
        ({"kind": "multistep", "milestones": [0.6, 0.4]}, "method.lr_milestones"),
        ({"kind": "multistep", "milestones": [2000]}, "method.lr_milestones"),
        ({"kind": "step"}, "method.lr_schedule"),
        ({"kind": "multistep", "milestones": [0.5], "gamma": 0}, "method.lr_gamma"),
    ],
)
def test_bad_schedules_are_refused(settings, setting):
    with pytest.raises(ConfigError) as info:
        LrSchedule(**settings)
    assert info.value.setting == setting


def test_ssim_loss_is_zero_for_equal_images_and_grows_with_noise():
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    noisy = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert float(ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert 0.05 < float(ssim_loss(noisy, x)) < float(ssim_loss(torch.rand_like(x), x))


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (("task=super_resolution", "method.fidelity_switch.at=1.5"), "method.fidelity_switch.at"),
        (("task=super_resolution", "method.fidelity_switch.loss=tv"), "method.fidelity_switch.loss"),
        (("operator=fourier", "noise=none", "method.fidelity_switch.at=0.2"), "method.fidelity_switch.loss"),
        (
            ("task=denoising", "method=mcdropout", "method.fidelity_switch.at=0.2"),
            "method.fidelity_switch.at",
        ),
    ],
)
def test_bad_fidelity_switches_are_refused_before_training(small_config, overrides, setting):
    cfg = small_config(*overrides)
    with pytest.raises(ConfigError) as info:
        build_method(cfg, build_problem(cfg))
    assert info.value.setting == setting


def test_the_switched_loss_is_one_minus_ssim_from_its_step_on():
    switch = FidelitySwitch(at=0.25, loss="ssim")
    switch.start(8)
    assert [switch.active(step) for step in (0, 1, 2, 3)] == [False, False, True, True]
    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    assert torch.equal(switch(a, b, torch.mean), ssim_loss(a, b))


# ---------------------------------------------------------------------------------- jobs
def test_the_blind_optimiser_gives_the_kernel_its_own_rate_and_the_schedule_halves_both(small_config):
    cfg = small_config("task=blind_deblurring", *SMALL)
    method = build_method(cfg, build_problem(cfg))
    groups = method.build_optimizer().param_groups
    assert [group["lr"] for group in groups] == [0.01, 1e-4]
    kernel_ids = {id(p) for p in method.problem.operator.generator.parameters()}
    assert {id(p) for p in groups[1]["params"]} == kernel_ids
    assert not kernel_ids & {id(p) for p in groups[0]["params"]}
    assert method.schedule.kind == "multistep" and method.schedule.milestones == [0.4, 0.6, 0.8]
    assert method.fidelity_switch.at is None  # the reference's 0.2 lost at 1 % noise (docs/deblurring.md)
    assert (
        small_config("task=blind_deblurring", "method.fidelity_switch.at=0.2").method.fidelity_switch.at
        == 0.2
    )


def read_metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


@pytest.mark.parametrize("task", ["deblurring", "blind_deblurring"])
def test_a_deblurring_job_reports_aligned_metrics(small_config, tmp_path, task):
    # The blind job also switches to 1 - SSIM halfway (the reference's loss switch).
    switch = ["method.fidelity_switch.at=0.5"] if task == "blind_deblurring" else []
    cfg = small_config(f"task={task}", *SMALL, *switch)
    run(cfg)
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    for name in ("psnr_aligned", "ssim_aligned", "shift_rows", "baseline_psnr_aligned"):
        assert name in metrics, name
    assert ("kernel_psnr" in metrics) == (task == "blind_deblurring")
    assert np.load(tmp_path / "reconstruction.npy").shape == (1, 32, 32)
    if task == "blind_deblurring":
        state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert "fitted_operator.generator.net.0.weight" in state
        assert "fitted_operator.kernel" in state  # the true kernel travels with the checkpoint


def test_a_loss_switch_needs_a_step_budget():
    with pytest.raises(ConfigError) as info:
        FidelitySwitch(at=0.2).start(-1)
    assert info.value.setting == "method.fidelity_switch.at"
    FidelitySwitch(at=None).start(-1)  # no switch, no budget needed
