"""Forward operators: exact adjoints, shapes, variance propagation, masks, observations, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dip_lightning.errors import ConfigError, InputFileError
from dip_lightning.physics.base import ForwardOperator
from dip_lightning.physics.downsampling import FACTORS, KERNELS, Downsampling, downsampling_kernel_1d
from dip_lightning.physics.identity import Identity
from dip_lightning.physics.inpainting import (
    Inpainting,
    block_mask,
    random_pixel_mask,
    read_mask_file,
    stroke_mask,
)
from dip_lightning.physics.noise import GaussianNoise, NoNoise, PoissonNoise
from dip_lightning.physics.observation import InverseProblem, make_observation


def assert_adjoint(op: ForwardOperator, channels: int, image_shape: tuple[int, int], seed: int = 0) -> None:
    """<A x, y> == <x, A^T y> in float64, for a batch of two random images and measurements."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, *image_shape, generator=g, dtype=torch.float64)
    ax = op(x)
    y = torch.randn(ax.shape, generator=g, dtype=torch.float64)
    aty = op.adjoint(y)
    assert aty.shape == x.shape
    assert ax.dtype == aty.dtype == torch.float64
    lhs = float((ax * y).sum())
    rhs = float((x * aty).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-10)


def assert_variance_propagation(op: ForwardOperator, channels: int, image_shape: tuple[int, int]) -> None:
    """Monte Carlo variance of A(x + noise) against propagate_variance (loose tolerance)."""
    g = torch.Generator().manual_seed(11)
    x = torch.rand(1, channels, *image_shape, generator=g, dtype=torch.float64)
    variance = 0.01 + 0.05 * torch.rand(1, channels, *image_shape, generator=g, dtype=torch.float64)
    samples = 20000
    noise = torch.randn(samples, channels, *image_shape, generator=g, dtype=torch.float64) * variance.sqrt()
    empirical = op(x + noise).var(dim=0, keepdim=True)
    predicted = op.propagate_variance(variance)
    assert predicted.shape == empirical.shape
    observed = predicted > 1e-8  # masked-out entries have zero variance on both sides
    assert torch.allclose(empirical[~observed], torch.zeros(()).double(), atol=1e-12)
    ratio = empirical[observed] / predicted[observed]
    assert float((ratio - 1).abs().max()) < 0.07
    assert float((ratio - 1).abs().mean()) < 0.02


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize("channels", [1, 3])
def test_identity_is_self_adjoint_and_shape_preserving(channels: int) -> None:
    op = Identity()
    assert_adjoint(op, channels, (12, 20))
    x = torch.rand(1, channels, 12, 20)
    assert torch.equal(op(x), x) and torch.equal(op.pseudo_inverse(x), x)
    assert torch.equal(op.propagate_variance(x), x)
    assert op.measurement_shape((12, 20), channels) == (channels, 12, 20)
    assert Identity((12, 20)).image_shape == (12, 20)
    assert_variance_propagation(op, channels, (4, 6))


# --------------------------------------------------------------------------- downsampling

SHAPES = [(16, 24), (40, 8)]  # non-square; multiplied by the factor / 2 below


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("channels", [1, 3])
def test_downsampling_adjoint_is_exact(kernel: str, factor: int, channels: int) -> None:
    op = Downsampling(factor=factor, kernel=kernel)
    for height, width in SHAPES:
        shape = (height * factor // 2, width * factor // 2)
        assert_adjoint(op, channels, shape, seed=factor)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("factor", FACTORS)
def test_downsampling_shapes(kernel: str, factor: int) -> None:
    op = Downsampling(factor=factor, kernel=kernel)
    x = torch.rand(2, 3, 8 * factor, 5 * factor)
    y = op(x)
    assert y.shape == (2, 3, 8, 5)
    assert op.adjoint(y).shape == x.shape
    assert op.pseudo_inverse(y).shape == x.shape
    assert op.propagate_variance(torch.ones_like(x)).shape == y.shape
    assert op.measurement_shape((8 * factor, 5 * factor), 3) == (3, 8, 5)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("factor", FACTORS)
def test_downsampling_kernel_is_normalised_and_symmetric(kernel: str, factor: int) -> None:
    taps = downsampling_kernel_1d(factor, kernel)
    assert float(taps.sum()) == pytest.approx(1.0)
    assert torch.allclose(taps, taps.flip(0))
    assert taps.numel() % factor == 0
    expected_taps = {"lanczos2": 4 * factor, "lanczos3": 6 * factor, "box": factor, "gauss": 4 * factor}
    assert taps.numel() == expected_taps[kernel]


def test_lanczos2_matches_the_dip_downsampler_kernel() -> None:
    # sinc(t) sinc(t/2) at t = ±0.25, ±0.75, ±1.25, ±1.75 (DIP's get_kernel, phase 0.5), normalised.
    t = torch.tensor([-1.75, -1.25, -0.75, -0.25, 0.25, 0.75, 1.25, 1.75], dtype=torch.float64)
    expected = torch.sinc(t) * torch.sinc(t / 2)
    expected = expected / expected.sum()
    assert torch.allclose(downsampling_kernel_1d(2, "lanczos2"), expected)
    assert float(expected[3]) == pytest.approx(0.4343, abs=1e-4)


def test_downsampling_preserves_constants_away_from_the_border() -> None:
    op = Downsampling(factor=4, kernel="lanczos3")
    y = op(torch.full((1, 1, 96, 64), 0.7))
    margin = op.padding // op.factor + 1
    assert torch.allclose(y[..., margin:-margin, margin:-margin], torch.tensor(0.7), atol=1e-5)
    box = Downsampling(factor=2, kernel="box")
    x = torch.rand(1, 2, 8, 6)
    assert torch.allclose(box(x), torch.nn.functional.avg_pool2d(x, 2))


def test_downsampling_pseudo_inverse_is_bicubic() -> None:
    op = Downsampling(factor=2)
    y = torch.rand(1, 1, 8, 12)
    expected = torch.nn.functional.interpolate(y, scale_factor=2, mode="bicubic", align_corners=False)
    assert torch.allclose(op.pseudo_inverse(y), expected)
    # A smooth image survives downsampling and bicubic upsampling (interior pixels).
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 48), indexing="ij")
    smooth = (0.5 + 0.3 * torch.sin(3 * xx + 2 * yy))[None, None]
    restored = op.pseudo_inverse(op(smooth))
    assert float((restored - smooth)[..., 8:-8, 8:-8].abs().max()) < 0.01


@pytest.mark.parametrize(("factor", "kernel"), [(2, "lanczos2"), (2, "gauss"), (4, "box")])
def test_downsampling_propagates_variance(factor: int, kernel: str) -> None:
    assert_variance_propagation(Downsampling(factor=factor, kernel=kernel), 2, (4 * factor, 3 * factor))


def test_downsampling_accepts_float32_operator_with_float64_input() -> None:
    op = Downsampling(2)
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    assert op(x).dtype == torch.float64
    assert torch.allclose(op(x).float(), op(x.float()), atol=1e-6)


@pytest.mark.parametrize("factor", [0, 1, 3, 5, 16, 2.5, "2"])
def test_downsampling_rejects_bad_factor(factor) -> None:
    with pytest.raises(ConfigError) as info:
        Downsampling(factor=factor)
    assert info.value.setting == "operator.factor"
    assert "2, 4, 8" in str(info.value)


def test_downsampling_rejects_unknown_kernel() -> None:
    with pytest.raises(ConfigError) as info:
        Downsampling(kernel="bilinear")
    assert info.value.setting == "operator.kernel"
    assert "lanczos2" in str(info.value)


@pytest.mark.parametrize(
    ("shape", "named"), [((30, 32), "height 30"), ((32, 34), "width 34"), ((6, 10), "height 6")]
)
def test_downsampling_size_must_be_divisible(shape: tuple[int, int], named: str) -> None:
    op = Downsampling(factor=4)
    with pytest.raises(ConfigError) as info:
        op.check_image_shape(shape)
    assert info.value.setting == "operator.factor"
    message = str(info.value)
    assert f"{shape[0]}x{shape[1]}" in message and named in message
    with pytest.raises(ConfigError):
        Downsampling(factor=4, image_shape=shape)
    op.check_image_shape((32, 64))  # fine
    assert Downsampling(factor=4, image_shape=(32, 64)).image_shape == (32, 64)


# --------------------------------------------------------------------------- inpainting

GENERATED_KINDS = ["random", "blocks", "strokes"]


@pytest.mark.parametrize("kind", GENERATED_KINDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_inpainting_adjoint_and_shapes(kind: str, channels: int) -> None:
    op = Inpainting((24, 40), kind=kind, missing_fraction=0.4, seed=3, block_size=6)
    assert op.mask.shape == (1, 1, 24, 40)
    assert op.image_shape == (24, 40)
    assert_adjoint(op, channels, (24, 40))
    x = torch.rand(2, channels, 24, 40)
    assert op(x).shape == x.shape
    assert torch.equal(op.pseudo_inverse(op(x)), op(x))
    assert op.measurement_shape((24, 40), channels) == (channels, 24, 40)
    assert set(op.mask.unique().tolist()) <= {0.0, 1.0}


def test_inpainting_soft_mask_adjoint_and_variance() -> None:
    mask = torch.rand(20, 28, generator=torch.Generator().manual_seed(0))
    mask[:5] = 0.0  # some fully missing rows too
    op = Inpainting.from_mask(mask)
    assert op.image_shape == (20, 28)
    assert op.observed_fraction == pytest.approx(float(mask.mean()))
    assert_adjoint(op, 3, (20, 28))
    x = torch.rand(1, 3, 20, 28)
    assert torch.allclose(op(x), x * mask)
    assert torch.allclose(op.propagate_variance(torch.ones_like(x)), (mask**2).expand_as(x))
    assert_variance_propagation(Inpainting.from_mask(mask[3:11, :10]), 2, (8, 10))
    with pytest.raises(ValueError):
        Inpainting.from_mask(mask * 2)


def test_inpainting_mask_follows_the_module_to_another_dtype() -> None:
    op = Inpainting((8, 8), kind="random", missing_fraction=0.5).double()
    assert op.mask.dtype == torch.float64
    assert "mask" in op.state_dict()


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9])
def test_random_mask_fraction_is_exact(fraction: float) -> None:
    op = Inpainting((50, 30), kind="random", missing_fraction=fraction, seed=1)
    missing = int((op.mask == 0).sum())
    assert missing == round(fraction * 1500)


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.6])
def test_block_mask_fraction_within_half_a_block(fraction: float) -> None:
    for seed in range(3):
        mask = block_mask((64, 48), fraction, 8, np.random.default_rng(seed))
        missing = 1 - float(mask.mean())
        assert abs(missing - fraction) <= 0.5 * 64 / (64 * 48) + 1e-9
        assert set(mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6])
@pytest.mark.parametrize("width", [1, 3, 6])
def test_stroke_mask_fraction_within_tolerance(fraction: float, width: int) -> None:
    mask = stroke_mask((64, 80), fraction, width, np.random.default_rng(0))
    assert abs((1 - float(mask.mean())) - fraction) < 0.01


def test_stroke_mask_draws_thick_lines_not_pixels() -> None:
    mask = stroke_mask((64, 64), 0.2, 3, np.random.default_rng(0)).numpy()
    missing = mask == 0
    # Most missing pixels have a missing neighbour on each side along some axis (line interiors).
    interior = missing[1:-1, 1:-1] & (
        (missing[:-2, 1:-1] & missing[2:, 1:-1]) | (missing[1:-1, :-2] & missing[1:-1, 2:])
    )
    assert interior.sum() > 0.5 * missing.sum()


@pytest.mark.parametrize("kind", GENERATED_KINDS)
def test_masks_are_reproducible_by_seed(kind: str) -> None:
    first = Inpainting((32, 32), kind=kind, missing_fraction=0.3, seed=5, block_size=4).mask
    again = Inpainting((32, 32), kind=kind, missing_fraction=0.3, seed=5, block_size=4).mask
    other = Inpainting((32, 32), kind=kind, missing_fraction=0.3, seed=6, block_size=4).mask
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_mask_functions_return_float_maps() -> None:
    rng = np.random.default_rng(0)
    for mask in (
        random_pixel_mask((10, 12), 0.5, rng),
        block_mask((10, 12), 0.5, 3, rng),
        stroke_mask((10, 12), 0.5, 2, rng),
    ):
        assert mask.shape == (10, 12) and mask.dtype == torch.float32


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_inpainting_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError) as info:
        Inpainting((16, 16), missing_fraction=fraction)
    assert info.value.setting == "operator.missing_fraction"


def test_inpainting_rejects_unknown_kind() -> None:
    with pytest.raises(ConfigError) as info:
        Inpainting((16, 16), kind="circles")
    assert info.value.setting == "operator.kind"
    assert "strokes" in str(info.value)


def test_inpainting_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError) as info:
        Inpainting((16, 16), kind="blocks", block_size=0)
    assert info.value.setting == "operator.block_size"
    with pytest.raises(ConfigError) as info:
        Inpainting((16, 16), kind="strokes", stroke_width=0)
    assert info.value.setting == "operator.stroke_width"
    with pytest.raises(ConfigError) as info:
        Inpainting(None, kind="random")
    assert info.value.setting == "operator.image_shape"


def test_inpainting_check_image_shape_names_both_sizes() -> None:
    op = Inpainting((16, 24), kind="random")
    op.check_image_shape((16, 24))
    with pytest.raises(ConfigError, match="mask is 16x24 but image is 24x16"):
        op.check_image_shape((24, 16))


# --------------------------------------------------------------------------- mask files


def write_png(path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def test_mask_file_round_trip_grey_png(tmp_path) -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)  # soft mask
    path = write_png(tmp_path / "mask.png", raw)
    op = Inpainting((20, 30), kind="file", mask_path=path)
    assert op.mask.shape == (1, 1, 20, 30)
    assert torch.allclose(op.mask[0, 0], torch.from_numpy(raw / 255.0).float())
    assert_adjoint(op, 3, (20, 30))
    inverted = Inpainting((20, 30), kind="file", mask_path=path, invert_mask_file=True)
    assert torch.allclose(inverted.mask, 1 - op.mask)
    # Without image_shape the file decides the size.
    assert Inpainting(None, kind="file", mask_path=path).image_shape == (20, 30)


def test_mask_file_rgb_png_is_averaged(tmp_path) -> None:
    raw = np.zeros((8, 10, 3), dtype=np.uint8)
    raw[..., 0] = 255
    raw[:, :5] = 255
    mask = read_mask_file(write_png(tmp_path / "rgb.png", raw), (8, 10))
    assert torch.allclose(mask[:, :5], torch.ones(8, 5))
    assert torch.allclose(mask[:, 5:], torch.full((8, 5), 1 / 3))


def test_mask_file_rgba_and_binary_png(tmp_path) -> None:
    raw = np.zeros((6, 6, 4), dtype=np.uint8)
    raw[:3] = 255
    raw[..., 3] = 255  # opaque alpha is ignored
    mask = read_mask_file(write_png(tmp_path / "rgba.png", raw))
    assert mask[:3].eq(1).all() and mask[3:].eq(0).all()
    binary = Image.fromarray(np.arange(36).reshape(6, 6) % 2 == 0)  # mode "1"
    binary.save(tmp_path / "binary.png")
    mask = read_mask_file(tmp_path / "binary.png", (6, 6))
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def test_mask_file_sixteen_bit_png_and_jpeg(tmp_path) -> None:
    raw = np.full((8, 8), 65535, dtype=np.uint16)
    raw[:4] = 32768
    Image.fromarray(raw).save(tmp_path / "deep.png")
    mask = read_mask_file(tmp_path / "deep.png", (8, 8))
    assert float(mask[0, 0]) == pytest.approx(32768 / 65535, abs=1e-4)
    assert float(mask[-1, -1]) == pytest.approx(1.0)
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(tmp_path / "mask.jpg", quality=100)
    assert float(read_mask_file(tmp_path / "mask.jpg").mean()) == pytest.approx(200 / 255, abs=0.01)


def test_mask_file_npy_float_and_integer(tmp_path) -> None:
    soft = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    np.save(tmp_path / "soft.npy", soft)
    assert torch.allclose(read_mask_file(tmp_path / "soft.npy", (6, 8)), torch.from_numpy(soft))
    binary = (np.arange(48).reshape(1, 6, 8) % 3 > 0).astype(np.int64)  # 0/1 integers, leading axis
    np.save(tmp_path / "binary.npy", binary)
    assert torch.equal(read_mask_file(tmp_path / "binary.npy", (6, 8)), torch.from_numpy(binary[0]).float())
    np.save(tmp_path / "bad.npy", soft * 3)
    with pytest.raises(InputFileError, match=r"\[0, 1\]"):
        read_mask_file(tmp_path / "bad.npy")


def test_mask_file_tif(tmp_path) -> None:
    raw = np.full((5, 7), 255, dtype=np.uint8)
    raw[2] = 0
    Image.fromarray(raw).save(tmp_path / "mask.tif")
    mask = read_mask_file(tmp_path / "mask.tif", (5, 7))
    assert mask[2].eq(0).all() and mask[0].eq(1).all()


def test_missing_mask_file_names_the_path(tmp_path) -> None:
    path = tmp_path / "nowhere" / "mask.png"
    with pytest.raises(InputFileError) as info:
        Inpainting((8, 8), kind="file", mask_path=str(path))
    assert str(path) in str(info.value)


def test_unreadable_mask_file_names_the_path(tmp_path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"this is not a png")
    with pytest.raises(InputFileError) as info:
        read_mask_file(path, (8, 8))
    assert str(path) in str(info.value)
    (tmp_path / "mask.gif.txt").write_text("x")
    with pytest.raises(InputFileError, match="unknown mask file type"):
        read_mask_file(tmp_path / "mask.gif.txt")


def test_wrong_size_mask_file_states_both_sizes(tmp_path) -> None:
    path = write_png(tmp_path / "mask.png", np.full((20, 30), 255, dtype=np.uint8))
    with pytest.raises(ConfigError) as info:
        Inpainting((32, 32), kind="file", mask_path=path)
    assert info.value.setting == "operator.mask_path"
    message = str(info.value)
    assert "mask is 20x30 but image is 32x32" in message
    assert path in message
    op = Inpainting(None, kind="file", mask_path=path)
    with pytest.raises(ConfigError, match="mask is 20x30 but image is 30x20") as info:
        op.check_image_shape((30, 20))
    assert info.value.setting == "operator.mask_path"


def test_all_missing_mask_file_suggests_inverting(tmp_path) -> None:
    path = write_png(tmp_path / "white_is_missing.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(InputFileError, match="invert_mask_file"):
        read_mask_file(path, (8, 8))


def test_file_kind_needs_a_path() -> None:
    with pytest.raises(ConfigError) as info:
        Inpainting((8, 8), kind="file")
    assert info.value.setting == "operator.mask_path"


# --------------------------------------------------------------------------- observations


def test_make_observation_shapes_and_reproducibility() -> None:
    image = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(0))
    op = Downsampling(factor=2)
    problem = make_observation(image, op, GaussianNoise(0.1), seed=1, name="rgb")
    assert isinstance(problem, InverseProblem)
    assert problem.observation.shape == (1, 3, 16, 24)
    assert problem.ground_truth.shape == (1, 3, 32, 48)
    assert problem.image_shape == (32, 48) and problem.channels == 3 and problem.name == "rgb"
    assert problem.measurement_shape == (3, 16, 24)
    assert problem.noise_std == pytest.approx(0.1)
    again = make_observation(image[None], op, GaussianNoise(0.1), seed=1)
    other = make_observation(image, op, GaussianNoise(0.1), seed=2)
    assert torch.equal(problem.observation, again.observation)
    assert not torch.equal(problem.observation, other.observation)
    clean = make_observation(image, op, NoNoise(), seed=1)
    assert torch.allclose(clean.observation, op(image[None]))
    assert clean.noise_std == 0.0


def test_make_observation_checks_the_shape_first() -> None:
    with pytest.raises(ConfigError) as info:
        make_observation(torch.rand(1, 30, 32), Downsampling(factor=4), GaussianNoise(0.1), seed=0)
    assert info.value.setting == "operator.factor"
    with pytest.raises(ConfigError):
        make_observation(torch.rand(1, 16, 16), Inpainting((8, 8)), GaussianNoise(0.1), seed=0)
    with pytest.raises(ValueError, match="shape"):
        make_observation(torch.rand(2, 1, 8, 8), Identity(), GaussianNoise(0.1), seed=0)
    with pytest.raises(ValueError, match="floating"):
        make_observation(torch.ones(1, 8, 8, dtype=torch.uint8), Identity(), GaussianNoise(0.1), seed=0)


def test_noise_std_depends_on_the_clean_measurement() -> None:
    image = torch.full((1, 16, 16), 0.5)
    problem = make_observation(
        image, Inpainting((16, 16), missing_fraction=0.5), GaussianNoise(0.1, relative=True), 0
    )
    # Relative noise is measured against A x (half of it masked to zero), not x.
    assert problem.noise_std == pytest.approx(0.1 * 0.25)
    blind = InverseProblem(
        problem.operator, problem.observation, None, problem.noise, "blind", problem.image_shape, 1
    )
    assert blind.noise_std is None
    poisson = make_observation(image, Identity(), PoissonNoise(10.0), seed=0)
    assert poisson.noise_std == pytest.approx((0.5 / 10.0) ** 0.5)


def test_inverse_problem_to_device_returns_a_copy() -> None:
    problem = make_observation(torch.rand(1, 8, 8), Inpainting((8, 8)), GaussianNoise(0.1), seed=0)
    moved = problem.to("cpu")
    assert moved is not problem
    assert torch.equal(moved.observation, problem.observation)
    assert moved.ground_truth is not None and moved.operator.mask.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_observation_is_the_same_on_gpu() -> None:
    image = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0))
    on_cpu = make_observation(image, Downsampling(2), GaussianNoise(0.1), seed=3)
    on_gpu = make_observation(image.cuda(), Downsampling(2).cuda(), GaussianNoise(0.1), seed=3)
    assert on_gpu.observation.device.type == "cuda"
    assert torch.allclose(on_gpu.observation.cpu(), on_cpu.observation, atol=1e-5)
    moved = on_cpu.to("cuda")
    assert moved.observation.device.type == "cuda" and moved.ground_truth.device.type == "cuda"
    assert_adjoint_on = Inpainting((16, 16), kind="strokes").cuda()
    x = torch.rand(1, 1, 16, 16, device="cuda", dtype=torch.float64)
    assert torch.allclose(assert_adjoint_on(x), x * assert_adjoint_on.mask.double())
