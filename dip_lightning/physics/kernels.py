"""Blur kernels: seeded camera-shake (motion) kernels, Gaussian and disk kernels, and kernel files.

Every kernel is a square, odd-sided, non-negative float64 array that sums to one (a point spread
function that keeps the mean brightness), centred on the middle pixel.

Motion kernels come from a random camera trajectory of our own, in the spirit of the camera-shake
model of Boracchi and Foi (2012): a point moves at constant speed in the image plane; at every
step its velocity keeps a share ``inertia`` of its direction and takes the rest from a fresh
Gaussian kick, and now and then (probability ``shake_probability``) a larger kick jerks it round.
The path is scaled so that its bounding box spans ``extent`` of the kernel's side, centred, and
its length is spread over the pixels it crosses by bilinear splatting (equal exposure time per
step). The same ``seed`` always gives the same kernel, on every machine (a CPU generator).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dip_lightning.errors import (
    ConfigError,
    InputFileError,
    check_choice,
    check_in_range,
    check_int,
    check_positive,
)

__all__ = [
    "KERNELS",
    "KERNEL_FILE_SUFFIXES",
    "disk_kernel",
    "gaussian_kernel",
    "make_kernel",
    "motion_kernel",
    "read_kernel_file",
]

KERNELS = ("motion", "gaussian", "disk", "file")
KERNEL_FILE_SUFFIXES = (".npy", ".png")
TRAJECTORY_STEPS = 500


def check_kernel_size(size: object, setting: str = "operator.kernel_size") -> int:
    """An odd side of at least 1: a kernel needs a centre pixel so that the blur does not shift."""
    side = check_int(setting, size, 1, extra=" and odd (a kernel needs a centre pixel)")
    if side % 2 == 0:
        raise ConfigError(setting, size, "must be an odd integer >= 1 (a kernel needs a centre pixel)")
    return side


def _normalised(kernel: Tensor) -> Tensor:
    return kernel / kernel.sum()


def _centred_grid(size: int) -> tuple[Tensor, Tensor]:
    centre = (size - 1) / 2
    axis = torch.arange(size, dtype=torch.float64) - centre
    return torch.meshgrid(axis, axis, indexing="ij")


def gaussian_kernel(size: int, sigma: float) -> Tensor:
    """An isotropic Gaussian of std ``sigma`` pixels, cut to ``size`` x ``size``."""
    check_positive("operator.gaussian_sigma", sigma)
    rows, cols = _centred_grid(size)
    return _normalised(torch.exp(-(rows**2 + cols**2) / (2.0 * float(sigma) ** 2)))


def disk_kernel(size: int, radius: float | None = None) -> Tensor:
    """A uniform disk (defocus) of ``radius`` pixels (default: half the side, touching its edges), with anti-aliased
    edges: each pixel weighs the fraction of it inside the disk, estimated on an 8 x 8 sub-grid."""
    radius = size / 2 if radius is None else float(check_positive("operator.disk_radius", radius))
    sub = 8
    offsets = (torch.arange(sub, dtype=torch.float64) + 0.5) / sub - 0.5
    rows, cols = _centred_grid(size)
    inside = torch.zeros(size, size, dtype=torch.float64)
    for dy in offsets:
        for dx in offsets:
            inside += ((rows + dy) ** 2 + (cols + dx) ** 2 <= radius**2).double()
    if not bool(inside.sum() > 0):
        raise ConfigError("operator.disk_radius", radius, "is too small: the disk covers no pixel")
    return _normalised(inside)


def camera_trajectory(
    generator: torch.Generator, steps: int, inertia: float, shake_probability: float
) -> Tensor:
    """A random path of ``steps`` points (complex numbers x + iy) at unit speed."""
    direction = torch.rand((), generator=generator, dtype=torch.float64) * 2 * math.pi
    velocity = torch.polar(torch.ones((), dtype=torch.float64), direction)
    kicks = torch.randn(steps, 2, generator=generator, dtype=torch.float64)
    shakes = torch.rand(steps, generator=generator, dtype=torch.float64) < shake_probability
    points = [torch.zeros((), dtype=torch.complex128)]
    for t in range(steps - 1):
        kick = torch.complex(kicks[t, 0], kicks[t, 1]) * (4.0 if bool(shakes[t]) else 1.0)
        velocity = inertia * velocity + (1.0 - inertia) * kick
        velocity = velocity / velocity.abs().clamp_min(1e-12)
        points.append(points[-1] + velocity)
    return torch.stack(points)


def _splat(path: Tensor, size: int) -> Tensor:
    """Spread equal weights at the points of ``path`` (pixel coordinates) bilinearly onto the grid."""
    rows, cols = path.imag, path.real
    top, left = rows.floor(), cols.floor()
    fy, fx = rows - top, cols - left
    kernel = torch.zeros(size * size, dtype=torch.float64)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            r = (top + dy).long().clamp(0, size - 1)
            c = (left + dx).long().clamp(0, size - 1)
            kernel.index_add_(0, r * size + c, wy * wx)
    return kernel.view(size, size)


def motion_kernel(
    size: int,
    seed: int,
    extent: float = 0.8,
    inertia: float = 0.95,
    shake_probability: float = 0.01,
) -> Tensor:
    """A camera-shake kernel from a random trajectory (see the module docstring)."""
    extent = check_in_range("operator.motion_extent", extent, 0.0, 1.0, high_open=False)
    if extent <= 0:
        raise ConfigError("operator.motion_extent", extent, "must be a number in (0, 1]")
    inertia = check_in_range("operator.motion_inertia", inertia, 0.0, 1.0)
    check_in_range("operator.motion_shake_probability", shake_probability, 0.0, 1.0, high_open=False)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    path = camera_trajectory(generator, TRAJECTORY_STEPS, float(inertia), float(shake_probability))
    low = torch.complex(path.real.min(), path.imag.min())
    high = torch.complex(path.real.max(), path.imag.max())
    span = max(float((high - low).real), float((high - low).imag), 1e-12)
    scale = extent * (size - 1) / span
    centre = (size - 1) / 2
    path = (path - (low + high) / 2) * scale + complex(centre, centre)
    return _normalised(_splat(path, size))


def _load_kernel_array(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        array = np.asarray(image.convert("I") if image.mode.startswith("I") else image.convert("L"))
    return array


def read_kernel_file(path: str | Path) -> Tensor:
    """A kernel from an ``.npy`` array or a grey ``.png`` (colour is converted to grey), scaled to
    sum one. Raises :class:`InputFileError` (setting ``kernel_path``) for a file that is missing,
    unreadable or not a square, odd-sided, non-negative 2-D array with a positive sum."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise InputFileError(
            path, "no such file" if not path.exists() else "not a regular file", "kernel_path"
        )
    if path.suffix.lower() not in KERNEL_FILE_SUFFIXES:
        raise InputFileError(
            path,
            f"unknown kernel file type {path.suffix!r}; use one of {', '.join(KERNEL_FILE_SUFFIXES)}",
            "kernel_path",
        )
    try:
        array = np.asarray(_load_kernel_array(path))
    except Exception as error:  # numpy and PIL raise many types for broken files
        raise InputFileError(
            path, f"cannot read it ({type(error).__name__}: {error})", "kernel_path"
        ) from error
    array = np.squeeze(array)
    problem = None
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        problem = f"a kernel must be a 2-D real array, got shape {array.shape} of {array.dtype}"
    elif array.shape[0] != array.shape[1] or array.shape[0] % 2 == 0:
        problem = f"a kernel must be square with an odd side (a centre pixel), got {array.shape[0]}x{array.shape[1]}"
    elif not np.isfinite(array).all():
        problem = "the kernel contains NaN or infinite values"
    elif array.min() < 0:
        problem = f"kernel values must be non-negative, found {array.min():g}"
    elif not array.sum() > 0:
        problem = "the kernel sums to zero"
    if problem:
        raise InputFileError(path, problem, "kernel_path")
    return _normalised(torch.from_numpy(array.astype(np.float64)))


def make_kernel(
    kind: str,
    size: int = 13,
    seed: int = 0,
    gaussian_sigma: float = 2.0,
    disk_radius: float | None = None,
    motion_extent: float = 0.8,
    path: str | None = None,
) -> Tensor:
    """The (size, size) float64 kernel of ``kind`` (motion, gaussian, disk, file); a file kernel
    has the file's size."""
    check_choice("operator.kernel", kind, KERNELS)
    if kind == "file":
        if path in (None, ""):
            raise ConfigError(
                "operator.kernel_path", path, "kernel='file' needs the path of an .npy or .png kernel"
            )
        return read_kernel_file(path)
    size = check_kernel_size(size)
    if kind == "gaussian":
        return gaussian_kernel(size, gaussian_sigma)
    if kind == "disk":
        return disk_kernel(size, disk_radius)
    return motion_kernel(size, int(check_int("operator.kernel_seed", seed)), extent=motion_extent)
