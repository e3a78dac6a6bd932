"""Speed of the CT ray transform: matrix build and cache load, forward, adjoint and autograd.

Every row applies the same system matrix, so only the kernels differ:

* ``plain torch``: the plain PyTorch reference, a torch sparse CSR tensor with default (64-bit)
  indices and torch's own autograd (its backward transposes the matrix on every call);
* ``scipy``, ``torch``, ``auto``: RayTransform's CPU backends (scipy CSR products; torch CSR with
  32-bit indices; scipy for one image and torch for a batch, the default), all with the transpose
  precomputed and used as the exact backward.

CUDA rows (plain torch and RayTransform) are added when a GPU is present. The last column is the
forward + backward time relative to the plain torch reference on the same device. Prints a table
and writes it as CSV (``benchmarks/results/ray_transform_speed_cpu.csv``; CUDA rows go to
``..._cuda.csv``).

    python benchmarks/ray_transform_speed.py                      # 64, 128, 256 pixels, 60 angles
    python benchmarks/ray_transform_speed.py --sizes 128 --batches 1 32 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from dip_lightning.physics.ray_transform import (
    CTGeometry,
    RayTransform,
    build_system_matrix,
    compute_system_matrix,
)

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = (
    "size",
    "angles",
    "nnz",
    "build_s",
    "cache_load_s",
    "device",
    "backend",
    "threads",
    "batch",
    "forward_ms",
    "adjoint_ms",
    "fwd_bwd_ms",
    "fwd_bwd_vs_plain",
)


class PlainTorchSparse:
    """Reference: the matrix as a default torch sparse CSR tensor, differentiated by torch itself."""

    def __init__(self, operator: RayTransform, device: torch.device) -> None:
        self.image_shape = operator.image_shape
        self.sinogram_shape = operator.geometry.sinogram_shape
        self.forward_matrix = self._to_torch(operator.scipy_matrix("A"), device)
        self.adjoint_matrix = self._to_torch(operator.scipy_matrix("AT"), device)

    @staticmethod
    def _to_torch(matrix: sp.csr_matrix, device: torch.device) -> Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                torch.from_numpy(matrix.indptr.astype(np.int64)),
                torch.from_numpy(matrix.indices.astype(np.int64)),
                torch.from_numpy(matrix.data),
                size=matrix.shape,
                device=device,
                check_invariants=False,
            )

    @staticmethod
    def _apply(matrix: Tensor, x: Tensor, out_shape: tuple[int, int]) -> Tensor:
        columns = x.reshape(x.shape[0] * x.shape[1], -1).T
        return (matrix @ columns).T.reshape(x.shape[0], x.shape[1], *out_shape)

    def __call__(self, x: Tensor) -> Tensor:
        return self._apply(self.forward_matrix, x, self.sinogram_shape)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._apply(self.adjoint_matrix, y, self.image_shape)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(function: Callable[[], object], device: torch.device, budget_s: float = 0.25) -> float:
    """Median wall time of ``function`` in ms, after a warm-up, repeated for about ``budget_s``."""
    function()
    _sync(device)
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < 3 or (time.perf_counter() < deadline and len(samples) < 200):
        start = time.perf_counter()
        function()
        _sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def build_times(geometry: CTGeometry) -> tuple[float, float, int]:
    """Cold build (astra, no cache) and warm load from a fresh cache directory, in seconds."""
    start = time.perf_counter()
    matrix = compute_system_matrix(geometry)
    cold = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as directory:
        build_system_matrix(geometry, directory)  # writes the file
        start = time.perf_counter()
        build_system_matrix(geometry, directory)
        load = time.perf_counter() - start
    return cold, load, matrix.nnz


def kernel_times(
    operator: RayTransform | PlainTorchSparse, device: torch.device, batch: int
) -> dict[str, float]:
    """Forward, adjoint and forward + backward through autograd for a (batch, 1, H, W) input."""
    height, width = operator.image_shape
    x = torch.rand(batch, 1, height, width, device=device)
    y = operator(x).detach()
    leaf = x.clone().requires_grad_(True)

    def forward_backward() -> None:
        leaf.grad = None
        operator(leaf).square().sum().backward()

    with torch.no_grad():
        forward = time_ms(lambda: operator(x), device)
        adjoint = time_ms(lambda: operator.adjoint(y), device)
    return {"forward_ms": forward, "adjoint_ms": adjoint, "fwd_bwd_ms": time_ms(forward_backward, device)}


def run(sizes: list[int], angles: int, batches: list[int], cache_dir: Path) -> list[dict[str, object]]:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows: list[dict[str, object]] = []
    for size in sizes:
        geometry = CTGeometry(size, num_angles=angles)
        cold, load, nnz = build_times(geometry)
        operators = {
            backend: RayTransform.from_geometry(geometry, cache_dir, cpu_backend=backend)
            for backend in ("scipy", "torch", "auto")
        }
        variants = [("cpu", "plain torch"), ("cpu", "scipy"), ("cpu", "torch"), ("cpu", "auto")]
        if len(devices) > 1:
            variants += [("cuda", "plain torch"), ("cuda", "auto")]
        for batch in batches:
            reference: dict[str, float] = {}
            for device_name, backend in variants:
                device = torch.device(device_name)
                if backend == "plain torch":
                    operator = PlainTorchSparse(operators["auto"], device)
                else:
                    operator = operators[backend]
                times = kernel_times(operator, device, batch)
                reference.setdefault(device_name, times["fwd_bwd_ms"])
                rows.append(
                    {
                        "size": size,
                        "angles": angles,
                        "nnz": nnz,
                        "build_s": round(cold, 3),
                        "cache_load_s": round(load, 4),
                        "device": device_name,
                        "backend": backend if device_name == "cpu" or backend != "auto" else "ours",
                        "threads": torch.get_num_threads() if device_name == "cpu" else "",
                        "batch": batch,
                        **{key: round(value, 3) for key, value in times.items()},
                        "fwd_bwd_vs_plain": round(times["fwd_bwd_ms"] / reference[device_name], 2),
                    }
                )
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    print("  ".join(c.rjust(widths[c]) for c in COLUMNS))
    for row in rows:
        print("  ".join(str(row[c]).rjust(widths[c]) for c in COLUMNS))


def write_csv(rows: list[dict[str, object]], path: Path) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--angles", type=int, default=60)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="B in (B, 1, H, W)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache_dir:
        rows = run(args.sizes, args.angles, args.batches, Path(cache_dir))
    print_table(rows)
    write_csv([r for r in rows if r["device"] == "cpu"], args.output_dir / "ray_transform_speed_cpu.csv")
    write_csv([r for r in rows if r["device"] == "cuda"], args.output_dir / "ray_transform_speed_cuda.csv")


if __name__ == "__main__":
    main()
