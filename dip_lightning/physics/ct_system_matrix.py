"""The CT system matrix: built with an astra-toolbox CPU projector, cached on disk.

Building the matrix is the slowest step of setting up a CT problem, so each one is stored under
``$DIP_LIGHTNING_CACHE/ray_transforms`` (default ``~/.cache/dip_lightning/ray_transforms``) in a
file named by :func:`cache_key`, a hash of the geometry, the astra version and the cache format.
Files are written atomically; a damaged or mismatching file is rebuilt with a warning and an
unwritable cache directory only costs a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import astra
import numpy as np
import scipy.sparse as sp

from dip_lightning.physics.ct_geometry import CTGeometry

__all__ = [
    "CACHE_ENV_VAR",
    "astra_geometries",
    "build_system_matrix",
    "cache_key",
    "cache_path",
    "compute_system_matrix",
    "default_cache_dir",
]

CACHE_ENV_VAR = "DIP_LIGHTNING_CACHE"
# Bumped whenever the meaning of a cached matrix changes, so stale files are never reused.
_CACHE_FORMAT = 1


def cache_key(geometry: CTGeometry) -> str:
    """A stable hash of every geometry field and the astra version; names the cached matrix."""
    fields = asdict(geometry)
    fields["image_size"] = list(geometry.shape)
    fields.update(astra_version=astra.__version__, cache_format=_CACHE_FORMAT)
    text = json.dumps(fields, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    """``$DIP_LIGHTNING_CACHE/ray_transforms``, or ``~/.cache/dip_lightning/ray_transforms``."""
    root = os.environ.get(CACHE_ENV_VAR)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "dip_lightning"
    return base / "ray_transforms"


def cache_path(geometry: CTGeometry, cache_dir: Path | str | None = None) -> Path:
    """The file that holds (or will hold) the matrix of ``geometry``."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return directory / f"ray_transform_{cache_key(geometry)}.npz"


def astra_geometries(geometry: CTGeometry) -> tuple[dict, dict]:
    """astra's volume and projection geometries of ``geometry`` (image centred on the origin)."""
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
    vol, proj = astra_geometries(geometry)
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
    path = cache_path(geometry, cache_dir)
    if path.is_file():
        matrix = _load_cached(path, geometry)
        if matrix is not None:
            return matrix
    matrix = compute_system_matrix(geometry)
    _save_atomically(matrix, path)
    return matrix
