"""task=mri: fastMRI-style column masks, the operator's linear algebra with one-sided lines, the
data-consistency step, rms-relative k-space noise, the ConvDecoder network and the task's runs."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dip_lightning.errors import ConfigError
from dip_lightning.job.run import build_problem, run
from dip_lightning.models.convdecoder import ConvDecoder, hidden_sizes
from dip_lightning.physics.cgls import cgls
from dip_lightning.physics.checks import adjoint_check
from dip_lightning.physics.coils import CoilFourier, birdcage_maps
from dip_lightning.physics.fourier import MaskedFourier
from dip_lightning.physics.kspace_masks import (
    MASK_KINDS,
    default_center_fraction,
    equispaced_line_mask,
    line_mask,
    random_line_mask,
)
from dip_lightning.physics.noise import GaussianNoise
from dip_lightning.physics.observation import make_observation

MRI = ("task=mri", "data.size=32", "trainer.check_val_every_n_epoch=1000")


def image(shape: tuple[int, int] = (32, 32), channels: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, channels, *shape, generator=torch.Generator().manual_seed(seed))


def mri(shape=(32, 32), **kwargs) -> MaskedFourier:
    return MaskedFourier(
        shape,
        **{"acceleration": 4.0, "center_fraction": None, "mask": "random", "lines": "columns", **kwargs},
    )


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("kind", ["random", "equispaced"])
@pytest.mark.parametrize(("lines", "acceleration"), [(64, 4.0), (128, 8.0), (33, 4.0)])
def test_fastmri_masks_read_the_centre_in_fft_order(kind: str, lines: int, acceleration: float) -> None:
    fraction = default_center_fraction(acceleration)
    sampled = line_mask(kind, lines, acceleration, fraction, np.random.default_rng(0))
    assert sampled.dtype == bool and sampled.shape == (lines,)
    centre = round(lines * fraction)
    centred = np.fft.fftshift(sampled)
    pad = (lines - centre + 1) // 2
    assert centred[pad : pad + centre].all()
    assert sampled[0]  # frequency 0 is read


def test_default_centre_fraction_is_fastmri_pairing() -> None:
    assert default_center_fraction(4.0) == pytest.approx(0.08)
    assert default_center_fraction(8.0) == pytest.approx(0.04)
    assert mri(acceleration=8.0).center_fraction == pytest.approx(0.04)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_same_seed_same_mask_other_seed_other_mask(kind: str) -> None:
    first = mri((64, 64), mask=kind, seed=5)
    assert torch.equal(first.mask, mri((64, 64), mask=kind, seed=5).mask)
    others = [mri((64, 64), mask=kind, seed=s).mask for s in range(6, 12)]
    assert any(not torch.equal(first.mask, other) for other in others)
    # Whole columns: every row of the mask is the same.
    assert torch.equal(first.mask, first.mask[..., :1, :].expand_as(first.mask))


@pytest.mark.parametrize(("acceleration", "lines"), [(4.0, 128), (8.0, 256)])
def test_random_mask_achieves_the_acceleration_on_average(acceleration: float, lines: int) -> None:
    fraction = default_center_fraction(acceleration)
    counts = [
        random_line_mask(lines, acceleration, fraction, np.random.default_rng(seed)).sum()
        for seed in range(400)
    ]
    # Binomial spread of the non-centre lines: the mean of 400 masks is within 0.5 lines.
    assert float(np.mean(counts)) == pytest.approx(lines / acceleration, abs=0.5)
    assert np.std(counts) > 0  # the count varies with the seed (fastMRI's rule)


@pytest.mark.parametrize(("acceleration", "lines"), [(4.0, 64), (8.0, 128), (4.0, 320)])
def test_equispaced_mask_reads_about_lines_over_acceleration(acceleration: float, lines: int) -> None:
    fraction = default_center_fraction(acceleration)
    for seed in range(5):
        count = int(equispaced_line_mask(lines, acceleration, fraction, np.random.default_rng(seed)).sum())
        assert abs(count - lines / acceleration) <= 0.1 * lines / acceleration + 2


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"acceleration": 64.0}, "operator.acceleration"),  # fewer than one of 32 lines
        ({"acceleration": 8.0, "center_fraction": 0.5}, "operator.center_fraction"),
        ({"center_fraction": 1.5}, "operator.center_fraction"),
        ({"center_fraction": -0.1}, "operator.center_fraction"),
        ({"mask": "spiral"}, "operator.mask"),
        ({"lines": "diagonal"}, "operator.lines"),
        ({"acceleration": 0.5}, "operator.acceleration"),
        ({"image_shape": (8, 1)}, "operator.image_shape"),
    ],
)
def test_bad_mri_settings_are_refused(kwargs: dict, setting: str) -> None:
    arguments = {"image_shape": (32, 32), **kwargs}
    shape = arguments.pop("image_shape")
    with pytest.raises(ConfigError) as info:
        mri(shape, **arguments)
    assert info.value.setting == setting


def test_bad_mask_kind_in_the_mask_function() -> None:
    with pytest.raises(ConfigError, match="random") as info:
        line_mask("radial", 32, 4.0, 0.08, np.random.default_rng(0))
    assert info.value.setting == "operator.mask"


# --------------------------------------------------------------------------- linear algebra


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize(("shape", "channels"), [((32, 32), 1), ((16, 24), 2)])
def test_adjoint_identity_shapes_and_dtypes(kind: str, shape: tuple[int, int], channels: int) -> None:
    operator = mri(shape, mask=kind, seed=3)
    check = adjoint_check(operator, shape, channels)
    assert check.relative_error < 1e-12 and abs(check.forward_side) > 0.1
    y = operator(image(shape, channels))
    assert y.dtype == torch.complex64 and y.shape == (1, channels, *shape)
    assert operator.adjoint(y).dtype == torch.float32
    assert operator.pseudo_inverse(y).dtype == torch.float32
    assert operator.pseudo_inverse(y).shape == (1, channels, *shape)


def test_pseudo_inverse_is_exact_for_one_sided_lines() -> None:
    operator = mri((32, 32), seed=0)
    sampled = operator.mask[0, 0, 0].bool().numpy()
    assert not np.array_equal(sampled, sampled[(-np.arange(32)) % 32])  # one-sided lines exist
    x = image((32, 32), channels=2).double()
    y = GaussianNoise(0.05)(operator(x), torch.Generator().manual_seed(1))
    closed = operator.pseudo_inverse(y)
    iterative = cgls(operator, y, iterations=60, tolerance=1e-14)
    torch.testing.assert_close(closed, iterative, rtol=0, atol=1e-8)
    # Noise-free: the pseudo-inverse reproduces the measurement.
    clean = operator(x)
    assert float((operator(operator.pseudo_inverse(clean)) - clean).abs().max()) < 1e-12


def test_data_consistency_puts_the_measured_lines_back() -> None:
    operator = mri((32, 32), seed=2)
    truth = image((32, 32)).double()
    y = operator(truth)
    guess = image((32, 32), seed=9).double()
    fixed = operator.data_consistent(guess, y)
    torch.testing.assert_close(operator(fixed), y)  # measured lines agree with the data
    # k-space the measurement says nothing of (neither the line nor its mirror image) is kept.
    columns = operator.mask[0, 0, 0].bool()
    known = columns | columns[(-torch.arange(32)) % 32]
    unmeasured = (~known).double().expand(32, 32)
    kept = torch.fft.fft2(fixed) * unmeasured
    torch.testing.assert_close(kept, torch.fft.fft2(guess) * unmeasured)
    assert float((fixed - truth).square().mean()) < float((guess - truth).square().mean())


def test_rms_relative_noise_is_about_the_image_rms_at_any_acceleration() -> None:
    x = image((64, 64)).double()
    noise = GaussianNoise(0.1, relative=True, reference="rms")
    levels = [noise.std(mri((64, 64), acceleration=a)(x)) for a in (2.0, 4.0, 8.0)]
    rms = float(x.square().mean().sqrt())
    for level in levels:
        assert 0.08 * rms < level <= 0.1 * rms + 1e-12
    assert "relative to rms" in noise.name
    with pytest.raises(ConfigError) as info:
        GaussianNoise(0.1, relative=True, reference="peak")
    assert info.value.setting == "noise.reference"


# --------------------------------------------------------------------------- coils and phase


@pytest.mark.parametrize(("coils", "phase"), [(4, 0.0), (1, 1.0), (3, 0.7)])
def test_coil_operator_adjoint_shapes_and_full_sampling(coils: int, phase: float) -> None:
    shape = (32, 24)
    operator = CoilFourier(
        shape, coils=coils, phase=phase, mask="random", lines="columns", center_fraction=None
    )
    check = adjoint_check(operator, shape, 2)
    assert check.relative_error < 1e-12 and abs(check.forward_side) > 0.1
    x = image(shape, channels=2)
    y = operator(x)
    assert y.shape == (1, 2 * coils, *shape) and y.dtype == torch.complex64
    assert operator.pseudo_inverse(y).shape == x.shape and operator.pseudo_inverse(y).dtype == torch.float32
    assert operator.propagate_variance(torch.ones_like(x)).shape == y.shape
    full = CoilFourier(shape, coils=coils, phase=phase, acceleration=1.0)
    torch.testing.assert_close(full.pseudo_inverse(full(x)), x, rtol=0, atol=1e-5)
    # Data consistency keeps the truth where it already agrees with the data.
    torch.testing.assert_close(operator.data_consistent(x, y), x, rtol=0, atol=1e-5)


def test_birdcage_maps_are_rss_normalised_and_phase_is_seeded() -> None:
    maps = birdcage_maps((16, 16), 4)
    np.testing.assert_allclose((np.abs(maps) ** 2).sum(axis=0), 1.0, atol=1e-12)
    assert np.abs(maps).std(axis=(1, 2)).min() > 0.01  # each coil sees the image unevenly
    first = CoilFourier((16, 16), coils=1, phase=1.0, seed=3).maps
    assert torch.equal(first, CoilFourier((16, 16), coils=1, phase=1.0, seed=3).maps)
    assert not torch.equal(first, CoilFourier((16, 16), coils=1, phase=1.0, seed=4).maps)
    assert float(first.angle().abs().max()) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(first.abs(), torch.ones(1))


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"coils": 0}, "operator.coils"),
        ({"coil_radius": 0.5}, "operator.coil_radius"),
        ({"phase": "x"}, "operator.phase"),
    ],
)
def test_bad_coil_settings_are_refused(kwargs: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        CoilFourier((16, 16), **kwargs)
    assert info.value.setting == setting


def test_mri_task_runs_with_coils_and_phase(small_config) -> None:
    cfg = small_config(
        *MRI, "operator=mri_coils", "operator.phase=1.0", "data_consistency=true", "trainer.max_steps=3"
    )
    run(cfg)
    metrics = read_metrics(cfg)
    assert metrics["status"] == "completed" and math.isfinite(metrics["psnr"])
    assert math.isfinite(metrics["baseline_psnr"])


# --------------------------------------------------------------------------- ConvDecoder


def test_hidden_sizes_grow_geometrically_to_the_image() -> None:
    sizes = hidden_sizes((8, 8), (64, 64), 8)
    assert len(sizes) == 7 and sizes[-1] == (64, 64)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(sizes))


@pytest.mark.parametrize("side", [16, 24, 37])
def test_convdecoder_output_has_the_input_size(side: int) -> None:
    net = ConvDecoder(in_channels=4, out_channels=2, channels=8, layers=4, in_size=(4, 4))
    out = net(torch.rand(1, 4, side, side + 3))
    assert out.shape == (1, 2, side, side + 3)
    sigmoid = ConvDecoder(
        4, 1, channels=8, layers=3, in_size=(4, 4), need_sigmoid=True, log_precision_channel=True
    )
    out = sigmoid(torch.rand(1, 4, 16, 16))
    assert out.shape == (1, 2, 16, 16) and float(out[:, 0].min()) >= 0 and float(out[:, 0].max()) <= 1


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"layers": 1}, "model.layers"),
        ({"channels": 0}, "model.channels"),
        ({"in_size": [8]}, "model.in_size"),
        ({"in_size": [0, 4]}, "model.in_size"),
        ({"upsample_mode": "cubic"}, "model.upsample_mode"),
        ({"kernel_size": 4}, "model.kernel_size"),
    ],
)
def test_bad_convdecoder_settings_are_refused(kwargs: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        ConvDecoder(4, 1, **kwargs)
    assert info.value.setting == setting


def test_convdecoder_refuses_an_image_smaller_than_its_input() -> None:
    with pytest.raises(ConfigError) as info:
        ConvDecoder(4, 1, channels=8, layers=3, in_size=(8, 8))(torch.rand(1, 4, 6, 6))
    assert info.value.setting == "model.in_size"


# --------------------------------------------------------------------------- the task


def read_metrics(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def test_the_mri_problem_samples_columns_of_mr_small(small_config) -> None:
    problem = build_problem(small_config(*MRI, "operator.acceleration=8"))
    operator = problem.operator
    assert operator.lines == "columns" and operator.mask_kind == "random"
    assert operator.center_fraction == pytest.approx(0.04)
    assert problem.observation.is_complex() and problem.image_shape == (32, 32)
    assert problem.name == "mr_small"
    clean = operator(problem.ground_truth)
    expected = 0.05 * float(clean.abs().square().mean().sqrt())
    assert problem.noise_std == pytest.approx(expected)


def test_mri_runs_convdecoder_with_data_consistency(small_config) -> None:
    cfg = small_config(
        *MRI,
        "model=convdecoder",
        "model.channels=8",
        "model.layers=4",
        "model.in_size=[4,4]",
        "data_consistency=true",
        "trainer.max_steps=10",
    )
    run(cfg)
    metrics = read_metrics(cfg)
    assert metrics["status"] == "completed"
    assert metrics["reconstruction_source"].endswith("+ data consistency")
    assert math.isfinite(metrics["psnr"]) and math.isfinite(metrics["psnr_before_data_consistency"])
    assert metrics["psnr"] != metrics["psnr_before_data_consistency"]


def test_data_consistency_is_off_by_default(small_config) -> None:
    cfg = small_config(*MRI, "trainer.max_steps=3")
    run(cfg)
    assert "psnr_before_data_consistency" not in read_metrics(cfg)


def test_baseline_is_the_zero_filled_inverse_fft(small_config) -> None:
    problem = build_problem(small_config(*MRI))
    operator = problem.operator
    zero_filled = torch.fft.ifft2(problem.observation * operator.pinv_weights, norm="ortho").real
    torch.testing.assert_close(operator.pseudo_inverse(problem.observation), zero_filled)
    baseline = make_observation(problem.ground_truth[0], operator, GaussianNoise(0.0), seed=0)
    assert float((operator.pseudo_inverse(baseline.observation) - problem.ground_truth).abs().max()) > 0.01


@pytest.mark.long
def test_mri_table_quick_reports_zero_filled_and_the_goal(tmp_path, capsys) -> None:
    from benchmarks import mri_table

    args = ["--quick", "--accelerations", "4", "--methods", "zero_filled", "dip", "convdecoder"]
    rows = mri_table.main([*args, "--out-dir", str(tmp_path / "table"), "--csv", str(tmp_path / "t.csv")])
    methods = [r["method"] for r in rows]
    assert methods == ["zero-filled", "DIP (skip)", "DIP (ConvDecoder)"]
    assert all(math.isfinite(r["psnr"]) for r in rows)
    assert all(math.isfinite(r["psnr_dc"]) for r in rows[1:])
    assert rows[0]["psnr_dc"] is None and rows[1]["steps"] == 4
    assert "x4 DIP (ConvDecoder)" in capsys.readouterr().out
    assert (tmp_path / "t.csv").read_text().startswith("image,acceleration,method")
