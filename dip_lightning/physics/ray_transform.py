"""2D computed-tomography ray transform as an explicit sparse system matrix.

The matrix comes from an astra-toolbox CPU projector, so no GPU is needed to build it, and it is
cached on disk because building it is the slowest step. Applying a stored matrix makes the adjoint
the exact transpose, which the dot-product test, the autograd gradients and the FBP all rely on.
On CPU a single image goes through scipy's CSR matrix-vector product (faster than torch's) and a
batch through torch's sparse CSR kernels with 32-bit indices (faster than scipy's multi-vector
product, see benchmarks/ray_transform_speed.py); on a GPU the matrix is moved once per device into
a torch sparse CSR tensor.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import astra
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_choice, check_positive
from dip_lightning.physics.base import ForwardOperator
from dip_lightning.physics.fbp import FILTERS as FBP_FILTERS
from dip_lightning.physics.fbp import fbp, weighted_backprojection_matrix

BEAMS = ("parallel", "fan")
PROJECTORS = {"parallel": ("linear", "line", "strip"), "fan": ("line_fanflat", "strip_fanflat")}
DEFAULT_PROJECTOR = {"parallel": "linear", "fan": "line_fanflat"}
CPU_BACKENDS = ("auto", "scipy", "torch")
CACHE_ENV_VAR = "DIP_LIGHTNING_CACHE"
# Bumped whenever the meaning of a cached matrix changes, so stale files are never reused.
_CACHE_FORMAT = 1
# Relative slack when checking detector coverage, so that e.g. ceil(sqrt(2) * 64) passes exactly.
_COVERAGE_TOLERANCE = 1e-9


def _as_shape(image_size: Any) -> tuple[int, int]:
    """Normalise an int or (H, W) pair to a tuple of two ints; raise ConfigError otherwise."""
    if isinstance(image_size, bool):
        raise ConfigError("operator.image_shape", image_size, "must be an int or a pair (H, W) of ints")
    if isinstance(image_size, int | np.integer):
        shape = (int(image_size), int(image_size))
    else:
        try:
            shape = tuple(int(s) for s in image_size)
        except (TypeError, ValueError):
            raise ConfigError(
                "operator.image_shape", image_size, "must be an int or a pair (H, W) of ints"
            ) from None
        if len(shape) != 2 or any(s != v for s, v in zip(shape, image_size)):
            raise ConfigError("operator.image_shape", image_size, "must be an int or a pair (H, W) of ints")
    if min(shape) < 2:
        raise ConfigError("operator.image_shape", image_size, "both sides must be at least 2 pixels")
    return shape  # type: ignore[return-value]


def _as_number(setting: str, value: Any) -> Any:
    """Floats stay floats (1 and 1.0 give the same cache key); None passes; other types fail."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(setting, value, "must be a number")
    if not math.isfinite(value):
        raise ConfigError(setting, value, "must be a finite number")
    return float(value)


def _as_count(setting: str, value: Any) -> Any:
    """Integers (also numpy ones) become int; anything else is left for ``validate`` to reject."""
    return int(value) if isinstance(value, np.integer) else value


@dataclass(frozen=True)
class CTGeometry:
    """Acquisition geometry of a 2D parallel- or fan-beam (flat detector) CT scan.

    Lengths are in the same unit as ``pixel_size``. Defaults left as ``None`` are filled in on
    construction, so two geometries that describe the same scan compare (and hash) equal:
    ``angular_range`` pi (parallel) or 2 pi (fan); ``detector_count`` just enough to see the whole
    image at every angle; fan distances 2 * size and size (size = longest image side in length
    units); ``projector`` 'linear' (parallel) or 'line_fanflat' (fan). Images need not be square.
    Construction validates and raises ConfigError naming the offending ``operator.*`` setting.
    """

    image_size: int | tuple[int, int]
    num_angles: int = 60
    angular_range: float | None = None
    beam: str = "parallel"
    detector_count: int | None = None
    detector_spacing: float = 1.0
    source_origin: float | None = None
    origin_detector: float | None = None
    projector: str | None = None
    pixel_size: float = 1.0

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        set_field(self, "image_size", _as_shape(self.image_size))
        for name in ("angular_range", "detector_spacing", "source_origin", "origin_detector", "pixel_size"):
            set_field(self, name, _as_number(f"operator.{name}", getattr(self, name)))
        for name in ("num_angles", "detector_count"):
            set_field(self, name, _as_count(f"operator.{name}", getattr(self, name)))
        check_choice("operator.beam", self.beam, BEAMS)
        check_positive("operator.pixel_size", self.pixel_size)
        check_positive("operator.detector_spacing", self.detector_spacing)
        fan = self.beam == "fan"
        if self.angular_range is None:
            set_field(self, "angular_range", 2 * math.pi if fan else math.pi)
        if self.projector is None:
            set_field(self, "projector", DEFAULT_PROJECTOR[self.beam])
        if fan:
            size = max(self.shape) * self.pixel_size
            if self.source_origin is None:
                set_field(self, "source_origin", 2.0 * size)
            if self.origin_detector is None:
                set_field(self, "origin_detector", 1.0 * size)
        if fan:
            self._check_fan_distances()
        if self.detector_count is None:
            set_field(self, "detector_count", self.required_detector_count())
        self.validate()

    # -- derived quantities --------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (H, W)."""
        return self.image_size  # type: ignore[return-value]

    @property
    def radius(self) -> float:
        """Half the image diagonal: every pixel lies inside this circle around the rotation centre."""
        height, width = self.shape
        return 0.5 * self.pixel_size * math.hypot(height, width)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """(num_angles, detector_count)."""
        return (self.num_angles, int(self.detector_count))  # type: ignore[arg-type]

    @property
    def angles(self) -> np.ndarray:
        """Projection angles in radians, equispaced over ``angular_range`` without the end point."""
        return np.linspace(0.0, self.angular_range, self.num_angles, endpoint=False)

    @property
    def magnification(self) -> float:
        """(source-detector distance) / (source-origin distance); 1 for parallel beams."""
        if self.beam == "parallel":
            return 1.0
        return (self.source_origin + self.origin_detector) / self.source_origin  # type: ignore[operator]

    def required_detector_count(self) -> int:
        """Fewest detector pixels whose rays still see the whole image at every angle."""
        if self.beam == "parallel":
            width = 2.0 * self.radius
        else:
            s, r = float(self.source_origin), self.radius  # type: ignore[arg-type]
            # The fan that just covers the circle of radius r, traced onto the flat detector.
            width = 2.0 * (s + float(self.origin_detector)) * r / math.sqrt(s * s - r * r)  # type: ignore[arg-type]
        return math.ceil(width / self.detector_spacing * (1.0 - _COVERAGE_TOLERANCE))

    # -- validation and identity ---------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError for any setting astra cannot use or that would crop the image."""
        _as_shape(self.image_size)
        if isinstance(self.num_angles, bool) or not isinstance(self.num_angles, int | np.integer):
            raise ConfigError("operator.num_angles", self.num_angles, "must be an integer >= 1")
        if self.num_angles < 1:
            raise ConfigError("operator.num_angles", self.num_angles, "must be an integer >= 1")
        check_choice("operator.beam", self.beam, BEAMS)
        check_choice("operator.projector", self.projector, PROJECTORS[self.beam])
        check_positive("operator.pixel_size", self.pixel_size)
        check_positive("operator.detector_spacing", self.detector_spacing)
        check_positive("operator.angular_range", self.angular_range)  # type: ignore[arg-type]
        if self.angular_range > 2 * math.pi + 1e-9:  # type: ignore[operator]
            raise ConfigError("operator.angular_range", self.angular_range, "must be at most 2*pi radians")
        if self.beam == "fan":
            self._check_fan_distances()
        elif self.source_origin is not None or self.origin_detector is not None:
            raise ConfigError(
                "operator.source_origin",
                self.source_origin,
                "source/detector distances only apply to operator.beam='fan'; leave them unset",
            )
        count = self.detector_count
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
            raise ConfigError("operator.detector_count", count, "must be a positive integer")
        needed = self.required_detector_count()
        if count < needed:
            raise ConfigError(
                "operator.detector_count",
                count,
                f"must be at least {needed} to cover the image diagonal with detector_spacing="
                f"{self.detector_spacing} (or leave it unset)",
            )

    def _check_fan_distances(self) -> None:
        check_positive("operator.source_origin", self.source_origin)  # type: ignore[arg-type]
        check_positive("operator.origin_detector", self.origin_detector)  # type: ignore[arg-type]
        if self.source_origin <= self.radius:  # type: ignore[operator]
            raise ConfigError(
                "operator.source_origin",
                self.source_origin,
                f"must exceed the image's half diagonal {self.radius:.4g} (else the source lies inside "
                "the field of view)",
            )

    def cache_key(self) -> str:
        """A stable hash of every field and the astra version; names the cached system matrix."""
        fields = asdict(self)
        fields["image_size"] = list(self.shape)
        fields.update(astra_version=astra.__version__, cache_format=_CACHE_FORMAT)
        text = json.dumps(fields, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# System matrix: build with astra, cache on disk
# ---------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$DIP_LIGHTNING_CACHE/ray_transforms``, or ``~/.cache/dip_lightning/ray_transforms``."""
    root = os.environ.get(CACHE_ENV_VAR)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "dip_lightning"
    return base / "ray_transforms"


def _astra_geometries(geometry: CTGeometry) -> tuple[dict, dict]:
    height, width = geometry.shape
    half_w, half_h = 0.5 * width * geometry.pixel_size, 0.5 * height * geometry.pixel_size
    vol = astra.create_vol_geom(height, width, -half_w, half_w, -half_h, half_h)
    if geometry.beam == "parallel":
        proj = astra.create_proj_geom(
            "parallel", geometry.detector_spacing, geometry.detector_count, geometry.angles
        )
    else:
        proj = astra.create_proj_geom(
            "fanflat",
            geometry.detector_spacing,
            geometry.detector_count,
            geometry.angles,
            geometry.source_origin,
            geometry.origin_detector,
        )
    return vol, proj


def compute_system_matrix(geometry: CTGeometry) -> sp.csr_matrix:
    """Build the (num_angles * detector_count, H * W) float32 matrix with an astra CPU projector.

    Rows are ordered angle-major; columns follow the row-major pixel order of a (H, W) image whose
    row 0 is the top (largest y). The astra objects are always deleted so nothing leaks.
    """
    vol, proj = _astra_geometries(geometry)
    projector_id = astra.create_projector(geometry.projector, proj, vol)
    matrix_id = None
    try:
        matrix_id = astra.projector.matrix(projector_id)
        matrix = astra.matrix.get(matrix_id)
    finally:
        if matrix_id is not None:
            astra.matrix.delete(matrix_id)
        astra.projector.delete(projector_id)
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return matrix


def _expected_shape(geometry: CTGeometry) -> tuple[int, int]:
    angles, detectors = geometry.sinogram_shape
    height, width = geometry.shape
    return angles * detectors, height * width


def _load_cached(path: Path, geometry: CTGeometry) -> sp.csr_matrix | None:
    """The cached matrix, or None (with a warning) if the file is unreadable or does not fit."""
    try:
        matrix = sp.load_npz(path)
        if matrix.format != "csr" or matrix.dtype != np.float32 or matrix.shape != _expected_shape(geometry):
            raise ValueError(f"holds a {matrix.format} {matrix.dtype} matrix of shape {matrix.shape}")
        matrix.check_format(full_check=False)
        return matrix
    except Exception as err:  # any damage to the file means: build it again
        warnings.warn(
            f"Ignoring corrupt ray-transform cache file {path} ({err}); rebuilding it.", stacklevel=3
        )
        return None


def _save_atomically(matrix: sp.csr_matrix, path: Path) -> None:
    """Write to a temporary file then rename, so readers never see a half-written matrix."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp.npz")
        try:
            with os.fdopen(fd, "wb") as handle:
                sp.save_npz(handle, matrix, compressed=False)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    except OSError as err:
        warnings.warn(f"Could not cache the ray transform in {path.parent} ({err}).", stacklevel=3)


def build_system_matrix(geometry: CTGeometry, cache_dir: Path | str | None = None) -> sp.csr_matrix:
    """The float32 CSR system matrix of ``geometry``, loaded from the disk cache when present.

    ``cache_dir`` defaults to :func:`default_cache_dir`. A corrupt or mismatching cache file is
    rebuilt with a warning; an unwritable cache directory only costs a warning.
    """
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = directory / f"ray_transform_{geometry.cache_key()}.npz"
    if path.is_file():
        matrix = _load_cached(path, geometry)
        if matrix is not None:
            return matrix
    matrix = compute_system_matrix(geometry)
    _save_atomically(matrix, path)
    return matrix


# ---------------------------------------------------------------------------------------------
# The operator
# ---------------------------------------------------------------------------------------------
# Each matrix kind and the kind that is its transpose; autograd's backward applies the partner.
_PARTNER = {"A": "AT", "AT": "A", "A2": "A2T", "A2T": "A2", "FBP": "FBPT", "FBPT": "FBP"}


# Below this many multiply-adds the 'auto' CPU backend stays with scipy.
_TORCH_MIN_WORK = 1 << 20
_METHOD_NAMES = {"A": "forward", "AT": "adjoint", "A2": "propagate_variance"}


class _SparseProduct(torch.autograd.Function):
    """y = M x for a fixed sparse M, with backward M^T g (itself differentiable the same way)."""

    @staticmethod
    def forward(ctx: Any, columns: Tensor, operator: RayTransform, kind: str) -> Tensor:
        ctx.operator, ctx.kind = operator, kind
        return operator._apply_matrix(kind, columns)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return _SparseProduct.apply(grad, ctx.operator, _PARTNER[ctx.kind]), None, None


class RayTransform(ForwardOperator):
    """Parallel- or fan-beam ray transform A mapping (B, C, H, W) images to (B, C, A, D) sinograms.

    ``adjoint`` is the exact transpose of the stored matrix, gradients through both are exact,
    ``propagate_variance`` applies the element-wise squared matrix and ``pseudo_inverse`` is the
    filtered back-projection. All B * C images go through one sparse-times-dense product.

    The matrices are plain attributes, not buffers: they never enter the state_dict (checkpoints
    stay small) and are rebuilt from the disk cache. ``.to(device)`` is not needed; each call runs
    on the device of its input, with the GPU copy of a matrix made once per device and dtype.
    ``cpu_backend`` picks the CPU kernel: 'auto' (scipy for one image or a small product, torch for
    a larger batch: the faster of the two in each case), or always 'scipy' or always 'torch'.
    """

    def __init__(
        self,
        image_shape: tuple[int, int] | None = None,
        num_angles: int = 60,
        angular_range: float | None = None,
        beam: str = "parallel",
        detector_count: int | None = None,
        detector_spacing: float = 1.0,
        source_origin: float | None = None,
        origin_detector: float | None = None,
        projector: str | None = None,
        cache_dir: Path | str | None = None,
        *,
        pixel_size: float = 1.0,
        fbp_filter: str = "ram-lak",
        fbp_frequency_scaling: float = 1.0,
        cpu_backend: str = "auto",
    ) -> None:
        super().__init__()
        if image_shape is None:
            raise ConfigError(
                "operator.image_shape", None, "must be given as (H, W) when the operator is built"
            )
        geometry = CTGeometry(
            image_size=image_shape,
            num_angles=num_angles,
            angular_range=angular_range,
            beam=beam,
            detector_count=detector_count,
            detector_spacing=detector_spacing,
            source_origin=source_origin,
            origin_detector=origin_detector,
            projector=projector,
            pixel_size=pixel_size,
        )
        self._setup(geometry, cache_dir, fbp_filter, fbp_frequency_scaling, cpu_backend)

    @classmethod
    def from_geometry(
        cls,
        geometry: CTGeometry,
        cache_dir: Path | str | None = None,
        *,
        fbp_filter: str = "ram-lak",
        fbp_frequency_scaling: float = 1.0,
        cpu_backend: str = "auto",
    ) -> RayTransform:
        """Build the operator of an existing (already validated) geometry."""
        operator = cls.__new__(cls)
        ForwardOperator.__init__(operator)
        operator._setup(geometry, cache_dir, fbp_filter, fbp_frequency_scaling, cpu_backend)
        return operator

    def _setup(
        self,
        geometry: CTGeometry,
        cache_dir: Path | str | None,
        fbp_filter: str,
        fbp_frequency_scaling: float,
        cpu_backend: str,
    ) -> None:
        check_choice("operator.fbp_filter", fbp_filter, FBP_FILTERS)
        check_positive("operator.fbp_frequency_scaling", fbp_frequency_scaling)
        if fbp_frequency_scaling > 1.0:
            raise ConfigError("operator.fbp_frequency_scaling", fbp_frequency_scaling, "must lie in (0, 1]")
        check_choice("operator.cpu_backend", cpu_backend, CPU_BACKENDS)
        self.geometry = geometry
        self.image_shape = geometry.shape
        self.fbp_filter = fbp_filter
        self.fbp_frequency_scaling = float(fbp_frequency_scaling)
        self.cpu_backend = cpu_backend
        self._scipy: dict[tuple[str, np.dtype], sp.csr_matrix] = {
            ("A", np.dtype(np.float32)): build_system_matrix(geometry, cache_dir)
        }
        self._torch: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    # -- matrices ------------------------------------------------------------------------------
    @property
    def matrix(self) -> sp.csr_matrix:
        """The float32 system matrix A (rows: angle-major sinogram, columns: row-major pixels)."""
        return self._scipy[("A", np.dtype(np.float32))]

    def scipy_matrix(self, kind: str = "A", dtype: np.dtype | type = np.float32) -> sp.csr_matrix:
        """A, its transpose 'AT', squares 'A2'/'A2T' or the FBP back-projector 'FBP'/'FBPT' as CSR."""
        key = (kind, np.dtype(dtype))
        if key not in self._scipy:
            if key[1] != np.float32:
                matrix = self.scipy_matrix(kind).astype(key[1])
            else:
                matrix = self._derive_matrix(kind)
            self._scipy[key] = matrix
        return self._scipy[key]

    def _derive_matrix(self, kind: str) -> sp.csr_matrix:
        if kind in ("AT", "A2T", "FBPT"):
            transposed = self.scipy_matrix(_PARTNER[kind]).T.tocsr()
            transposed.sort_indices()
            return transposed
        if kind == "A2":
            squared = self.matrix.copy()
            squared.data = squared.data * squared.data
            return squared
        if kind == "FBP":
            return weighted_backprojection_matrix(self.matrix, self.geometry)
        raise KeyError(kind)

    def torch_matrix(self, kind: str, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The matrix ``kind`` as a torch sparse CSR tensor on ``device``; built once per device."""
        key = (kind, torch.device(device), dtype)
        if key not in self._torch:
            matrix = self.scipy_matrix(kind)
            fits = max(matrix.nnz, *matrix.shape) < np.iinfo(np.int32).max
            index = np.int32 if fits else np.int64  # MKL and cuSPARSE are faster with 32-bit indices
            with warnings.catch_warnings():  # torch flags sparse CSR as beta on every construction
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self._torch[key] = torch.sparse_csr_tensor(
                    torch.from_numpy(matrix.indptr.astype(index)),
                    torch.from_numpy(matrix.indices.astype(index)),
                    torch.from_numpy(matrix.data),
                    size=matrix.shape,
                    dtype=dtype,
                    device=device,
                    check_invariants=False,  # scipy produced a sorted, valid CSR matrix
                )
        return self._torch[key]

    def _use_scipy(self, count: int) -> bool:
        if self.cpu_backend != "auto":
            return self.cpu_backend == "scipy"
        # Threaded torch kernels pay a start-up cost per call that only large products amortise.
        return count == 1 or self.matrix.nnz * count < _TORCH_MIN_WORK

    def _apply_matrix(self, kind: str, columns: Tensor) -> Tensor:
        """Multiply every row of ``columns`` (N, n_in) by the matrix ``kind``; returns (N, n_out)."""
        dtype = columns.dtype
        work_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        data = columns.detach().to(work_dtype)
        if data.device.type == "cpu" and self._use_scipy(data.shape[0]):
            matrix = self.scipy_matrix(kind, np.float64 if work_dtype == torch.float64 else np.float32)
            array = data.numpy()
            if array.shape[0] == 1:
                result = torch.from_numpy(matrix @ array[0]).unsqueeze(0)
            else:
                result = torch.from_numpy(matrix @ np.ascontiguousarray(array.T)).T
        else:
            matrix = self.torch_matrix(kind, data.device, work_dtype)
            result = (matrix @ data.T.contiguous()).T
        return result.to(dtype)

    # -- the operator interface ----------------------------------------------------------------
    def _columns(self, x: Tensor, trailing: tuple[int, int], what: str) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != trailing:
            raise ValueError(
                f"{type(self).__name__}.{what} expects a tensor of shape "
                f"(B, C, {trailing[0]}, {trailing[1]}), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__}.{what} expects a floating-point tensor, got {x.dtype}")
        return x.reshape(x.shape[0] * x.shape[1], trailing[0] * trailing[1])

    def _product(
        self, kind: str, x: Tensor, trailing_in: tuple[int, int], trailing_out: tuple[int, int]
    ) -> Tensor:
        columns = self._columns(x, trailing_in, _METHOD_NAMES[kind])
        result = _SparseProduct.apply(columns, self, kind)
        return result.reshape(x.shape[0], x.shape[1], *trailing_out)

    def forward(self, x: Tensor) -> Tensor:
        """Sinograms (B, C, num_angles, detector_count) of images (B, C, H, W)."""
        return self._product("A", x, self.image_shape, self.geometry.sinogram_shape)

    def adjoint(self, y: Tensor) -> Tensor:
        """Back-projection A^T y: the exact transpose of ``forward``."""
        return self._product("AT", y, self.geometry.sinogram_shape, self.image_shape)

    def propagate_variance(self, variance: Tensor) -> Tensor:
        """(A∘A) v: the sinogram variance for independent pixel variances ``variance``."""
        return self._product("A2", variance, self.image_shape, self.geometry.sinogram_shape)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """Filtered back-projection with this operator's filter settings."""
        return fbp(
            y,
            self.geometry,
            filter=self.fbp_filter,
            frequency_scaling=self.fbp_frequency_scaling,
            operator=self,
        )

    def measurement_shape(self, image_shape: tuple[int, int], channels: int = 1) -> tuple[int, ...]:
        self.check_image_shape(image_shape)
        return (channels, *self.geometry.sinogram_shape)

    def check_image_shape(self, image_shape: tuple[int, int]) -> None:
        if tuple(image_shape) != self.image_shape:
            raise ConfigError(
                "operator.image_shape",
                tuple(image_shape),
                f"this CT operator was built for images of shape {self.image_shape}",
            )

    # -- housekeeping --------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """Drop device copies when pickled (e.g. to spawn workers); they are rebuilt on demand."""
        state = self.__dict__.copy()
        state["_torch"] = {}
        return state

    def extra_repr(self) -> str:
        g = self.geometry
        return (
            f"image_shape={self.image_shape}, beam={g.beam!r}, num_angles={g.num_angles}, "
            f"detector_count={g.detector_count}, projector={g.projector!r}, nnz={self.matrix.nnz}"
        )
