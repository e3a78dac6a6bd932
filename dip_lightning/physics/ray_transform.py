"""2D computed-tomography ray transform as an explicit sparse system matrix.

The matrix (:mod:`dip_lightning.physics.ct_system_matrix`) comes from an astra-toolbox CPU
projector, so no GPU is needed to build it, and it is cached on disk because building it is the
slowest step. Applying a stored matrix makes the adjoint the exact transpose, which the
dot-product test, the autograd gradients and the FBP (:mod:`dip_lightning.physics.fbp`) all rely
on. On CPU a single image goes through scipy's CSR matrix-vector product (faster than torch's) and
a batch through torch's sparse CSR kernels with 32-bit indices (faster than scipy's multi-vector
product, see benchmarks/ray_transform_speed.py); on a GPU the matrix is moved once per device into
a torch sparse CSR tensor. The geometry lives in :mod:`dip_lightning.physics.ct_geometry`; its
names and the cache's are re-exported here for existing imports.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_choice, check_positive
from dip_lightning.physics.base import ForwardOperator
from dip_lightning.physics.ct_geometry import BEAMS, DEFAULT_PROJECTOR, PROJECTORS, CTGeometry
from dip_lightning.physics.ct_system_matrix import (
    CACHE_ENV_VAR,
    build_system_matrix,
    compute_system_matrix,
    default_cache_dir,
)
from dip_lightning.physics.fbp import FILTERS as FBP_FILTERS
from dip_lightning.physics.fbp import fbp, weighted_backprojection_matrix

__all__ = [
    "BEAMS",
    "CACHE_ENV_VAR",
    "CPU_BACKENDS",
    "DEFAULT_PROJECTOR",
    "PROJECTORS",
    "CTGeometry",
    "RayTransform",
    "build_system_matrix",
    "compute_system_matrix",
    "default_cache_dir",
]

CPU_BACKENDS = ("auto", "scipy", "torch")
# Each matrix kind and the kind that is its transpose; autograd's backward applies the partner.
_PARTNER = {"A": "AT", "AT": "A", "A2": "A2T", "A2T": "A2", "FBP": "FBPT", "FBPT": "FBP"}


# Below this many multiply-adds the 'auto' CPU backend stays with scipy.
_TORCH_MIN_WORK = 1 << 20
_METHOD_NAMES = {
    "A": "forward",
    "AT": "adjoint",
    "A2": "propagate_variance",
    "FBP": "weighted_backprojection",
}


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

    def weighted_backprojection(self, y: Tensor) -> Tensor:
        """The fan-beam FBP back-projector applied to filtered sinograms (see :mod:`.fbp`)."""
        return self._product("FBP", y, self.geometry.sinogram_shape, self.image_shape)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """Filtered back-projection with this operator's filter settings."""
        return fbp(y, self, filter=self.fbp_filter, frequency_scaling=self.fbp_frequency_scaling)

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
