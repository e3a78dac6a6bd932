"""Figures for reports: calibration diagrams and metric curves.

Figures are built as ``matplotlib.figure.Figure`` objects drawn by the Agg canvas directly, not
through pyplot: no global figure registry to leak memory over long sweeps, no display needed on
cluster nodes, and the user's own backend choice (e.g. ``matplotlib.use("Agg")``) is untouched.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["calibration_diagram", "curves_figure", "figure_to_array", "save_figure"]

_CURVE_KEYS = ("variance", "mse", "counts")


def _new_figure(size: tuple[float, float] = (5.0, 4.0)) -> tuple[Figure, Any]:
    """A Figure with one axes and an Agg canvas attached (so it can be drawn headless)."""
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _as_numpy(values: Any) -> np.ndarray:
    """Tensors (on any device) and sequences to float64 numpy arrays."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def calibration_diagram(curve: Mapping[str, Any], title: str = "", *, log_axes: bool = True) -> Figure:
    """Per-bin MSE against mean predicted variance, with the diagonal of perfect calibration.

    ``curve`` is the dict from ``metrics.uncertainty.calibration_curve``. Marker areas scale
    with the bin counts; empty bins (and, on log axes, non-positive values) are left out.
    If ``curve`` has a ``uce`` entry it is shown in the title.
    """
    missing = [k for k in _CURVE_KEYS if k not in curve]
    if missing:
        raise ValueError(f"calibration curve is missing keys {missing}; expected {list(_CURVE_KEYS)}")
    variance, mse, counts = (_as_numpy(curve[k]) for k in _CURVE_KEYS)
    if not variance.shape == mse.shape == counts.shape:
        raise ValueError(
            f"calibration curve arrays differ in length: variance {variance.shape}, "
            f"mse {mse.shape}, counts {counts.shape}"
        )
    keep = (counts > 0) & np.isfinite(variance) & np.isfinite(mse)
    if log_axes:
        keep &= (variance > 0) & (mse > 0)
    variance, mse, counts = variance[keep], mse[keep], counts[keep]

    fig, ax = _new_figure()
    if variance.size:
        lo = float(min(variance.min(), mse.min()))
        hi = float(max(variance.max(), mse.max()))
        if lo == hi:
            lo, hi = (lo / 2, hi * 2) if log_axes else (lo - 0.5, hi + 0.5)
        ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", label="perfect calibration")
        sizes = 20.0 + 280.0 * counts / counts.max()
        ax.plot(variance, mse, color="tab:blue", linewidth=1.0)
        ax.scatter(variance, mse, s=sizes, color="tab:blue", alpha=0.7, label="bins (area ~ pixels)")
        ax.legend(loc="upper left")
    if log_axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("mean predicted variance")
    ax.set_ylabel("mean squared error")
    parts = [title] if title else []
    if "uce" in curve and curve["uce"] is not None:
        parts.append(f"UCE = {float(curve['uce']):.3g}")
    ax.set_title("  |  ".join(parts))
    ax.grid(True, which="both", alpha=0.3)
    return fig


def curves_figure(curves: Mapping[str, Sequence[tuple[int, float]]], ylabel: str, title: str = "") -> Figure:
    """One line per named run of (step, value) points, e.g. PSNR over optimisation steps.

    Points are sorted by step; NaN values leave gaps rather than failing.
    """
    fig, ax = _new_figure((6.0, 4.0))
    drawn = False
    for name, points in curves.items():
        if len(points) == 0:
            continue
        ordered = sorted(points, key=lambda p: p[0])
        steps = [int(p[0]) for p in ordered]
        values = [float(p[1]) if math.isfinite(float(p[1])) else math.nan for p in ordered]
        ax.plot(steps, values, label=str(name), marker="." if len(steps) < 30 else None)
        drawn = True
    if drawn:
        ax.legend(loc="best")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an (H, W, 3) uint8 RGB array (for image loggers)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3].copy()


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write a figure atomically: to a temporary file beside ``path``, then ``os.replace``.

    A run killed mid-write (pre-emption on a cluster) leaves either the old file or the new one,
    never a truncated image. The format follows the suffix (PNG when there is none).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fmt = target.suffix.lstrip(".").lower() or "png"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if not isinstance(fig.canvas, FigureCanvasAgg):
                FigureCanvasAgg(fig)
            fig.savefig(handle, format=fmt)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return target
