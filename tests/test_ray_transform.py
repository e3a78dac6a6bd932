"""CT physics: the ray transform and its adjoint, the system-matrix cache, FBP and Poisson-log noise."""

from __future__ import annotations

import copy
import math
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import astra
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dip_lightning.data.phantoms import shepp_logan
from dip_lightning.errors import ConfigError
from dip_lightning.physics import ct_system_matrix as cm
from dip_lightning.physics import ray_transform as rt
from dip_lightning.physics.ct_geometry import CTGeometry
from dip_lightning.physics.ct_noise import PoissonLogNoise
from dip_lightning.physics.ct_system_matrix import build_system_matrix, cache_key
from dip_lightning.physics.fbp import fbp, padded_length, ramp_filter
from dip_lightning.physics.ray_transform import RayTransform


@pytest.fixture(autouse=True)
def _private_cache_one_thread(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Keep default-located cache files in the session's temporary directory; use one CPU thread.

    One thread keeps torch's sparse kernels from waiting on busy cores of a shared CI machine.
    """
    monkeypatch.setenv(rt.CACHE_ENV_VAR, str(tmp_path_factory.getbasetemp() / "dip_cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    return 10.0 * math.log10(1.0 / float(np.mean((np.clip(estimate, 0.0, 1.0) - truth) ** 2)))


def _phantom(size: int) -> torch.Tensor:
    return torch.from_numpy(shepp_logan(size)).float()[None, None]


# -------------------------------------------------------------------------------------------
# Adjointness and gradients
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "num_angles", "beam", "projector"),
    [
        ((32, 32), 10, "parallel", None),
        ((48, 48), 30, "parallel", None),
        ((32, 48), 20, "parallel", "strip"),
        ((32, 32), 12, "parallel", "line"),
        ((32, 32), 10, "fan", None),
        ((48, 48), 30, "fan", None),
        ((48, 32), 20, "fan", "strip_fanflat"),
    ],
)
def test_dot_product(shape: tuple[int, int], num_angles: int, beam: str, projector: str | None) -> None:
    operator = RayTransform(image_shape=shape, num_angles=num_angles, beam=beam, projector=projector)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, *shape, generator=generator)
    y = torch.randn(2, 1, *operator.geometry.sinogram_shape, generator=generator)
    lhs = float((operator(x).double() * y.double()).sum())
    rhs = float((x.double() * operator.adjoint(y).double()).sum())
    assert abs(lhs - rhs) / abs(lhs) < 1e-5
    assert operator(x).shape == (2, 1, *operator.geometry.sinogram_shape)
    assert operator.adjoint(y).shape == (2, 1, *shape)


def test_forward_matches_astra_projection_orientation() -> None:
    """Our matrix reproduces astra's own forward projection, so the pixel order is astra's."""
    operator = RayTransform(image_shape=(24, 40), num_angles=9)
    image = np.random.default_rng(1).random((24, 40)).astype(np.float32)
    vol, proj = cm.astra_geometries(operator.geometry)
    projector_id = astra.create_projector("linear", proj, vol)
    try:
        sino_id, expected = astra.create_sino(image, projector_id)
        astra.data2d.delete(sino_id)
    finally:
        astra.projector.delete(projector_id)
    ours = operator(torch.from_numpy(image)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("beam", ["parallel", "fan"])
def test_autograd_gradients_are_the_adjoint(beam: str) -> None:
    operator = RayTransform(image_shape=(16, 16), num_angles=8, beam=beam)
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 16, 16, generator=generator, requires_grad=True)
    upstream = torch.randn(2, 1, *operator.geometry.sinogram_shape, generator=generator)
    (operator(x) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, operator.adjoint(upstream))
    y = upstream.clone().requires_grad_(True)
    image_upstream = torch.randn(2, 1, 16, 16, generator=generator)
    (operator.adjoint(y) * image_upstream).sum().backward()
    torch.testing.assert_close(y.grad, operator(image_upstream))


@pytest.mark.parametrize("backend", ["scipy", "torch"])
def test_gradcheck_and_gradgradcheck_in_float64(backend: str) -> None:
    operator = RayTransform(image_shape=(6, 6), num_angles=3, beam="fan", cpu_backend=backend)
    x = torch.rand(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(operator, (x,))
    assert torch.autograd.gradgradcheck(operator, (x,))
    y = torch.rand(1, 1, *operator.geometry.sinogram_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(operator.adjoint, (y,))
    assert torch.autograd.gradcheck(operator.propagate_variance, (x,))


@pytest.mark.parametrize(("batch", "channels"), [(3, 1), (1, 2)])
def test_batched_equals_per_image(batch: int, channels: int) -> None:
    operator = RayTransform(image_shape=(20, 20), num_angles=7)
    x = torch.rand(batch, channels, 20, 20, generator=torch.Generator().manual_seed(5))
    y = operator(x)
    back = operator.adjoint(y)
    variance = operator.propagate_variance(x)
    for b in range(batch):
        for c in range(channels):
            single = x[b : b + 1, c : c + 1]
            torch.testing.assert_close(y[b, c], operator(single)[0, 0])
            torch.testing.assert_close(back[b, c], operator.adjoint(operator(single))[0, 0])
            torch.testing.assert_close(variance[b, c], operator.propagate_variance(single)[0, 0])


def test_non_contiguous_and_float64_inputs() -> None:
    operator = RayTransform(image_shape=(16, 16), num_angles=6)
    x = torch.rand(16, 16, 2, 3).permute(2, 3, 0, 1)  # (2, 3, 16, 16), not contiguous
    torch.testing.assert_close(operator(x), operator(x.contiguous()))
    double = operator(x.double())
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), operator(x), rtol=1e-5, atol=1e-5)
    single = operator(x[:1, :1].double())  # one image: the scipy path in float64
    assert single.dtype == torch.float64
    torch.testing.assert_close(single, double[:1, :1])
    half = operator(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16


def test_torch_cpu_backend_matches_scipy() -> None:
    scipy_op = RayTransform(image_shape=(16, 16), num_angles=6, cpu_backend="scipy")
    torch_op = RayTransform(image_shape=(16, 16), num_angles=6, cpu_backend="torch")
    assert RayTransform(image_shape=(16, 16), num_angles=6).cpu_backend == "auto"
    # 32-bit indices: the faster MKL / cuSPARSE kernels.
    assert torch_op.torch_matrix("A", torch.device("cpu"), torch.float32).crow_indices().dtype == torch.int32
    x = torch.rand(3, 1, 16, 16, requires_grad=True)
    torch.testing.assert_close(torch_op(x), scipy_op(x))
    y = torch.rand(3, 1, *scipy_op.geometry.sinogram_shape)
    torch.testing.assert_close(torch_op.adjoint(y), scipy_op.adjoint(y))
    torch_op(x).sum().backward()
    torch.testing.assert_close(x.grad, scipy_op.adjoint(torch.ones_like(y)))


def test_auto_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    operator = RayTransform(image_shape=(16, 16), num_angles=6)
    assert operator._use_scipy(1) and operator._use_scipy(4)  # one image, or a tiny product
    x = torch.rand(4, 1, 16, 16)
    small = operator(x)
    monkeypatch.setattr(rt, "_TORCH_MIN_WORK", 0)
    assert operator._use_scipy(1) and not operator._use_scipy(2)
    torch.testing.assert_close(operator(x), small)


def test_propagate_variance_exact_and_monte_carlo() -> None:
    operator = RayTransform(image_shape=(12, 12), num_angles=5)
    generator = torch.Generator().manual_seed(11)
    variance = torch.rand(1, 1, 12, 12, generator=generator) * 0.5 + 0.05
    propagated = operator.propagate_variance(variance)
    squared = operator.matrix.multiply(operator.matrix)
    np.testing.assert_allclose(
        propagated.flatten().numpy(), squared @ variance.flatten().numpy(), rtol=1e-5, atol=1e-6
    )
    samples = torch.randn(4000, 1, 12, 12, generator=generator) * variance.sqrt()
    empirical = operator(samples).double().var(dim=0)
    hit = propagated[0] > 1e-3
    ratio = empirical[hit].sum() / propagated[0].double()[hit].sum()
    assert abs(float(ratio) - 1.0) < 0.03
    relative = (empirical[hit] - propagated[0].double()[hit]).abs() / propagated[0].double()[hit]
    assert float(relative.median()) < 0.1


def test_matrices_stay_out_of_the_state_dict_and_survive_pickling() -> None:
    operator = RayTransform(image_shape=(16, 16), num_angles=6)
    x = torch.rand(1, 1, 16, 16)
    operator.propagate_variance(x)  # creates derived matrices too
    assert len(operator.state_dict()) == 0
    clone = pickle.loads(pickle.dumps(operator))
    torch.testing.assert_close(clone(x), operator(x))
    torch.testing.assert_close(copy.deepcopy(operator).adjoint(operator(x)), operator.adjoint(operator(x)))
    assert "nnz=" in repr(operator)


def test_measurement_shape_and_image_shape_check() -> None:
    operator = RayTransform(image_shape=(16, 20), num_angles=6, detector_count=40)
    assert operator.measurement_shape((16, 20), channels=3) == (3, 6, 40)
    operator.check_image_shape((16, 20))
    with pytest.raises(ConfigError, match=r"operator\.image_shape"):
        operator.check_image_shape((20, 16))
    with pytest.raises(ConfigError, match=r"operator\.image_shape"):
        operator.measurement_shape((8, 8))


def test_wrong_tensor_shapes_and_dtypes_rejected() -> None:
    operator = RayTransform(image_shape=(16, 16), num_angles=6)
    with pytest.raises(ValueError, match="shape"):
        operator(torch.zeros(1, 1, 16, 17))
    with pytest.raises(ValueError, match="shape"):
        operator(torch.zeros(16, 16))
    with pytest.raises(ValueError, match="shape"):
        operator.adjoint(torch.zeros(1, 1, 16, 16))
    with pytest.raises(TypeError, match="floating-point"):
        operator(torch.zeros(1, 1, 16, 16, dtype=torch.int64))


# -------------------------------------------------------------------------------------------
# Geometry and validation
# -------------------------------------------------------------------------------------------
def test_geometry_defaults() -> None:
    parallel = CTGeometry(64)
    assert parallel.shape == (64, 64)
    assert parallel.angular_range == pytest.approx(math.pi)
    assert parallel.detector_count == math.ceil(math.sqrt(2) * 64) == 91
    assert parallel.projector == "linear"
    fan = CTGeometry((64, 64), beam="fan")
    assert fan.angular_range == pytest.approx(2 * math.pi)
    assert (fan.source_origin, fan.origin_detector) == (128.0, 64.0)
    assert fan.projector == "line_fanflat"
    # The fan must cover the projected image circle: wider than the parallel detector times M.
    assert fan.detector_count > parallel.detector_count * 1.5
    assert CTGeometry(64) == CTGeometry((64, 64), angular_range=math.pi, detector_count=91)
    # Integer-valued settings from a config file give the same geometry and the same cache file.
    same = CTGeometry([64, 64], num_angles=np.int64(60), detector_spacing=1, pixel_size=1)
    assert same == parallel and cache_key(same) == cache_key(parallel)


def test_cache_key_is_stable_and_sensitive() -> None:
    key = cache_key(CTGeometry(32, num_angles=10))
    assert key == cache_key(CTGeometry((32, 32), num_angles=10, projector="linear"))
    assert key != cache_key(CTGeometry(32, num_angles=11))
    assert key != cache_key(CTGeometry(32, num_angles=10, projector="strip"))
    assert key != cache_key(CTGeometry(32, num_angles=10, pixel_size=0.5))
    assert key != cache_key(CTGeometry((32, 33), num_angles=10))


@pytest.mark.parametrize(
    ("kwargs", "setting", "text"),
    [
        ({"num_angles": 0}, "operator.num_angles", ">= 1"),
        ({"num_angles": -5}, "operator.num_angles", ">= 1"),
        ({"num_angles": 2.5}, "operator.num_angles", "integer"),
        ({"num_angles": True}, "operator.num_angles", "integer"),
        ({"detector_count": 50}, "operator.detector_count", "at least 91"),
        ({"detector_count": 0}, "operator.detector_count", "positive"),
        ({"detector_count": 60, "detector_spacing": 1.5}, "operator.detector_count", "at least 61"),
        ({"beam": "cone"}, "operator.beam", "'parallel'"),
        ({"projector": "line_fanflat"}, "operator.projector", "'linear'"),
        ({"projector": "cuda"}, "operator.projector", "'strip'"),
        ({"beam": "fan", "projector": "linear"}, "operator.projector", "'line_fanflat'"),
        ({"beam": "fan", "source_origin": 40.0}, "operator.source_origin", "half diagonal"),
        ({"beam": "fan", "source_origin": -10.0}, "operator.source_origin", "> 0"),
        ({"beam": "fan", "origin_detector": 0.0}, "operator.origin_detector", "> 0"),
        ({"beam": "fan", "origin_detector": -1.0}, "operator.origin_detector", "> 0"),
        ({"beam": "fan", "detector_count": 100}, "operator.detector_count", "at least"),
        ({"source_origin": 100.0}, "operator.source_origin", "fan"),
        ({"angular_range": 0.0}, "operator.angular_range", "> 0"),
        ({"angular_range": 7.0}, "operator.angular_range", "2\\*pi"),
        ({"detector_spacing": 0.0}, "operator.detector_spacing", "> 0"),
        ({"pixel_size": -1.0}, "operator.pixel_size", "> 0"),
        ({"pixel_size": float("inf")}, "operator.pixel_size", "finite"),
        ({"detector_spacing": "wide"}, "operator.detector_spacing", "number"),
        ({"angular_range": float("nan")}, "operator.angular_range", "finite"),
    ],
)
def test_invalid_geometry_rejected(kwargs: dict, setting: str, text: str) -> None:
    with pytest.raises(ConfigError, match=text) as info:
        CTGeometry(64, **kwargs)
    assert info.value.setting == setting
    with pytest.raises(ConfigError) as info:
        RayTransform(image_shape=(64, 64), **kwargs)
    assert info.value.setting == setting


@pytest.mark.parametrize("shape", [None, (0, 5), (1, 8), (4, 5, 6), "abc", (4.5, 4), True])
def test_invalid_image_shape_rejected(shape: object) -> None:
    with pytest.raises(ConfigError) as info:
        RayTransform(image_shape=shape)  # type: ignore[arg-type]
    assert info.value.setting == "operator.image_shape"


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"fbp_filter": "butterworth"}, "operator.fbp_filter"),
        ({"fbp_frequency_scaling": 0.0}, "operator.fbp_frequency_scaling"),
        ({"fbp_frequency_scaling": 1.5}, "operator.fbp_frequency_scaling"),
        ({"cpu_backend": "numba"}, "operator.cpu_backend"),
    ],
)
def test_invalid_operator_options_rejected(kwargs: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        RayTransform(image_shape=(16, 16), num_angles=4, **kwargs)
    assert info.value.setting == setting


def test_geometry_is_immutable() -> None:
    geometry = CTGeometry(16)
    with pytest.raises(AttributeError):
        geometry.num_angles = 3  # type: ignore[misc]


# -------------------------------------------------------------------------------------------
# System-matrix cache
# -------------------------------------------------------------------------------------------
def _same_matrix(first: sp.csr_matrix, second: sp.csr_matrix) -> bool:
    return (
        first.shape == second.shape
        and first.dtype == second.dtype == np.float32
        and np.array_equal(first.indptr, second.indptr)
        and np.array_equal(first.indices, second.indices)
        and np.array_equal(first.data, second.data)
    )


def test_cache_hit_is_identical_and_faster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    geometry = CTGeometry(64, num_angles=60)
    start = time.perf_counter()
    cold = build_system_matrix(geometry, tmp_path)
    cold_seconds = time.perf_counter() - start
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [f"ray_transform_{cache_key(geometry)}.npz"]  # no temp files left

    calls: list[CTGeometry] = []
    monkeypatch.setattr(cm, "compute_system_matrix", lambda g: calls.append(g))
    start = time.perf_counter()
    warm = build_system_matrix(geometry, tmp_path)
    warm_seconds = time.perf_counter() - start
    assert calls == []  # served from the file
    assert _same_matrix(cold, warm)
    assert warm_seconds < 0.5 * cold_seconds


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_geometry"])
def test_corrupt_cache_file_is_rebuilt_with_warning(tmp_path: Path, damage: str) -> None:
    geometry = CTGeometry(16, num_angles=5)
    reference = build_system_matrix(geometry, tmp_path)
    path = tmp_path / f"ray_transform_{cache_key(geometry)}.npz"
    if damage == "garbage":
        path.write_bytes(b"not a matrix at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        sp.save_npz(path, cm.compute_system_matrix(CTGeometry(16, num_angles=4)), compressed=False)
    with pytest.warns(UserWarning, match="corrupt ray-transform cache"):
        rebuilt = build_system_matrix(geometry, tmp_path)
    assert _same_matrix(rebuilt, reference)
    assert _same_matrix(sp.load_npz(path), reference)  # the file was repaired


def test_default_cache_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rt.CACHE_ENV_VAR, str(tmp_path))
    assert cm.default_cache_dir() == tmp_path / "ray_transforms"
    geometry = CTGeometry(12, num_angles=3)
    build_system_matrix(geometry)
    assert (tmp_path / "ray_transforms" / f"ray_transform_{cache_key(geometry)}.npz").is_file()
    monkeypatch.delenv(rt.CACHE_ENV_VAR)
    assert cm.default_cache_dir() == Path.home() / ".cache" / "dip_lightning" / "ray_transforms"


def test_unwritable_cache_only_warns(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("occupies the cache directory's name")
    with pytest.warns(UserWarning, match="Could not cache"):
        matrix = build_system_matrix(CTGeometry(12, num_angles=3), blocker)
    assert matrix.shape == (3 * CTGeometry(12).detector_count, 144)


@pytest.mark.parametrize("fail", [False, True])
def test_build_deletes_its_astra_objects(monkeypatch: pytest.MonkeyPatch, fail: bool) -> None:
    created: list[tuple[str, int]] = []
    deleted: list[tuple[str, int]] = []
    create_projector, make_matrix, get_matrix = (
        astra.create_projector,
        astra.projector.matrix,
        astra.matrix.get,
    )
    real_delete_projector, real_delete_matrix = astra.projector.delete, astra.matrix.delete

    def record(kind: str, function):  # type: ignore[no-untyped-def]
        def wrapped(*args):  # type: ignore[no-untyped-def]
            result = function(*args)
            created.append((kind, result))
            return result

        return wrapped

    def failing_get(matrix_id: int) -> None:
        raise RuntimeError("simulated astra failure")

    monkeypatch.setattr(astra, "create_projector", record("projector", create_projector))
    monkeypatch.setattr(astra.projector, "matrix", record("matrix", make_matrix))
    monkeypatch.setattr(astra.matrix, "get", failing_get if fail else get_matrix)
    monkeypatch.setattr(
        astra.projector, "delete", lambda i: (deleted.append(("projector", i)), real_delete_projector(i))
    )
    monkeypatch.setattr(
        astra.matrix, "delete", lambda i: (deleted.append(("matrix", i)), real_delete_matrix(i))
    )
    if fail:
        with pytest.raises(RuntimeError, match="simulated"):
            cm.compute_system_matrix(CTGeometry(12, num_angles=3, beam="fan"))
    else:
        cm.compute_system_matrix(CTGeometry(12, num_angles=3, beam="fan"))
    assert len(created) == 2
    assert sorted(created) == sorted(deleted)


# -------------------------------------------------------------------------------------------
# Filtered back-projection
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "num_angles", "beam", "threshold"),
    [(64, 180, "parallel", 22.0), (128, 60, "parallel", 20.0), (64, 180, "fan", 22.0)],
)
def test_fbp_reconstructs_shepp_logan(size: int, num_angles: int, beam: str, threshold: float) -> None:
    operator = RayTransform(image_shape=(size, size), num_angles=num_angles, beam=beam)
    phantom = _phantom(size)
    reconstruction = operator.pseudo_inverse(operator(phantom))
    assert reconstruction.shape == phantom.shape
    assert _psnr(reconstruction[0, 0].numpy(), phantom[0, 0].numpy()) > threshold
    # The scaling is right: the mean value is preserved to within a percent.
    assert float(reconstruction.mean() / phantom.mean()) == pytest.approx(1.0, abs=0.01)


def test_fbp_filters_and_batching() -> None:
    operator = RayTransform(image_shape=(32, 32), num_angles=45)
    images = torch.cat([_phantom(32), torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))])
    sinograms = operator(images)
    sharp = fbp(sinograms, operator, "ram-lak")
    for name in ("shepp-logan", "cosine", "hann"):
        smooth = fbp(sinograms, operator, name)
        assert torch.isfinite(smooth).all()
        # Windowed filters suppress the white-noise image's high frequencies.
        assert float(smooth[1].std()) < float(sharp[1].std())
    torch.testing.assert_close(sharp[1:], fbp(sinograms[1:], operator))
    # The operator's pseudo-inverse is this FBP with its own filter.
    ram_lak = RayTransform(image_shape=(32, 32), num_angles=45, fbp_filter="ram-lak")
    torch.testing.assert_close(ram_lak.pseudo_inverse(sinograms), sharp)
    # A lower cut-off removes more high frequencies.
    cut = fbp(sinograms, operator, "ram-lak", frequency_scaling=0.5)
    assert float(cut[1].std()) < float(sharp[1].std())


def test_ramp_filter_response() -> None:
    assert padded_length(91) == 256 and padded_length(64) == 128
    response = ramp_filter(64, 1.0)
    frequencies = np.fft.rfftfreq(128)
    assert response.shape == (65,)
    # Close to |f| away from DC, small but positive at DC (no offset in the reconstruction).
    np.testing.assert_allclose(response[16:].numpy(), frequencies[16:], rtol=0.05)
    assert 0.0 < float(response[0]) < 0.01
    assert float(ramp_filter(64, 1.0, "hann")[-1]) == pytest.approx(0.0, abs=1e-7)
    assert torch.all(ramp_filter(64, 1.0, frequency_scaling=0.5)[33:] == 0.0)


def test_fbp_rejects_bad_inputs() -> None:
    operator = RayTransform(image_shape=(16, 16), num_angles=6)
    sinogram = operator(torch.rand(1, 1, 16, 16))
    with pytest.raises(ConfigError, match=r"operator\.fbp_filter"):
        fbp(sinogram, operator, "butterworth")
    for scaling in (0.0, 1.5, -1.0):
        with pytest.raises(ConfigError, match=r"operator\.fbp_frequency_scaling"):
            fbp(sinogram, operator, frequency_scaling=scaling)
    with pytest.raises(ValueError, match="shape"):
        fbp(sinogram[..., :-1], operator)


# -------------------------------------------------------------------------------------------
# Poisson-log noise
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("photons", "mu_scale"), [(4096.0, None), (1000.0, 0.05)])
def test_poisson_log_noise_matches_delta_method(photons: float, mu_scale: float | None) -> None:
    operator = RayTransform(image_shape=(16, 16), num_angles=8)
    clean = operator(_phantom(16))
    noise = PoissonLogNoise(photons=photons, mu_scale=mu_scale)
    mu = noise.mu(clean)
    if mu_scale is None:
        assert float(clean.max()) * mu == pytest.approx(3.0)
    samples = noise(clean.expand(2000, -1, -1, -1), torch.Generator().manual_seed(0)).double()
    residual = samples - clean.double()
    expected = noise.expected_std(clean)
    assert math.sqrt(float(residual.square().mean())) == pytest.approx(expected, rel=0.03)
    # Per ray: variance ~ 1 / (N0 exp(-mu p)) / mu^2, and the bias is small against the noise.
    per_ray = 1.0 / (photons * torch.exp(-mu * clean.double())) / mu**2
    ratio = residual.var(dim=0) / per_ray[0]
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.05)
    assert float(residual.mean(dim=0).abs().max()) < 0.2 * expected


def test_poisson_log_noise_is_seeded_and_keeps_dtype() -> None:
    clean = torch.rand(2, 1, 5, 9) * 20
    noise = PoissonLogNoise(photons=200.0)
    first = noise(clean, torch.Generator().manual_seed(4))
    second = noise(clean, torch.Generator().manual_seed(4))
    third = noise(clean, torch.Generator().manual_seed(5))
    assert torch.equal(first, second) and not torch.equal(first, third)
    assert first.dtype == clean.dtype and first.shape == clean.shape
    assert noise(clean.double(), torch.Generator().manual_seed(4)).dtype == torch.float64
    assert "photons=200" in noise.name and "auto" in noise.name


def test_poisson_log_noise_zero_counts_stay_finite() -> None:
    clean = torch.full((1, 1, 4, 50), 10.0)
    noise = PoissonLogNoise(photons=1.0, mu_scale=1.0)  # exp(-10): almost every count is zero
    noisy = noise(clean, torch.Generator().manual_seed(0))
    assert torch.isfinite(noisy).all()
    assert float(noisy.max()) == pytest.approx(-math.log(0.1))


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"photons": 0.0}, "noise.photons"),
        ({"photons": -5.0}, "noise.photons"),
        ({"photons": float("nan")}, "noise.photons"),
        ({"photons": float("inf")}, "noise.photons"),
        ({"mu_scale": 0.0}, "noise.mu_scale"),
        ({"mu_scale": -0.1}, "noise.mu_scale"),
    ],
)
def test_poisson_log_noise_invalid_settings(kwargs: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        PoissonLogNoise(**kwargs)
    assert info.value.setting == setting


def test_poisson_log_noise_rejects_non_finite_sinogram() -> None:
    clean = torch.ones(1, 1, 3, 3)
    clean[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        PoissonLogNoise()(clean, torch.Generator().manual_seed(0))


def test_environment_is_untouched_outside_tests() -> None:
    assert os.environ[rt.CACHE_ENV_VAR].endswith("dip_cache")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    operator = RayTransform(image_shape=(32, 32), num_angles=20, beam="fan")
    x = torch.rand(3, 1, 32, 32)
    y = operator(x)
    x_cuda = x.cuda().requires_grad_(True)
    y_cuda = operator(x_cuda)
    assert y_cuda.device.type == "cuda"
    torch.testing.assert_close(y_cuda.cpu(), y, rtol=1e-4, atol=1e-4)
    y_cuda.square().sum().backward()
    torch.testing.assert_close(x_cuda.grad.cpu(), operator.adjoint(2 * y), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(
        operator.pseudo_inverse(y.cuda()).cpu(), operator.pseudo_inverse(y), rtol=1e-3, atol=1e-3
    )
