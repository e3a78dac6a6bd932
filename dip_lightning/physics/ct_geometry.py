"""Acquisition geometry of a 2D parallel- or fan-beam CT scan: the settings, their defaults and checks.

A geometry is a frozen value: two that describe the same scan compare and hash equal, which is
what the system-matrix cache (:mod:`dip_lightning.physics.ct_system_matrix`) keys its files by.
It knows nothing of astra or of tensors, so it can be built and validated before anything slow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dip_lightning.errors import ConfigError, check_choice, check_finite, check_int, check_positive

__all__ = ["BEAMS", "DEFAULT_PROJECTOR", "PROJECTORS", "CTGeometry"]

BEAMS = ("parallel", "fan")
PROJECTORS = {"parallel": ("linear", "line", "strip"), "fan": ("line_fanflat", "strip_fanflat")}
DEFAULT_PROJECTOR = {"parallel": "linear", "fan": "line_fanflat"}
# Relative slack when checking detector coverage, so that e.g. ceil(sqrt(2) * 64) passes exactly.
_COVERAGE_TOLERANCE = 1e-9
_SHAPE_RULE = "must be an int or a pair (H, W) of ints"


def _as_shape(image_size: Any) -> tuple[int, int]:
    """Normalise an int or (H, W) pair to a tuple of two ints; raise ConfigError otherwise."""
    if isinstance(image_size, bool):
        raise ConfigError("operator.image_shape", image_size, _SHAPE_RULE)
    if isinstance(image_size, int | np.integer):
        shape = (int(image_size), int(image_size))
    else:
        try:
            shape = tuple(int(s) for s in image_size)
        except (TypeError, ValueError):
            raise ConfigError("operator.image_shape", image_size, _SHAPE_RULE) from None
        if len(shape) != 2 or any(s != v for s, v in zip(shape, image_size)):
            raise ConfigError("operator.image_shape", image_size, _SHAPE_RULE)
    if min(shape) < 2:
        raise ConfigError("operator.image_shape", image_size, "both sides must be at least 2 pixels")
    return shape  # type: ignore[return-value]


def _as_number(setting: str, value: Any) -> float | None:
    """Finite numbers become floats (1 and 1.0 give the same cache key); None passes."""
    return None if value is None else float(check_finite(setting, value))


def _as_count(value: Any) -> Any:
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
            set_field(self, name, _as_count(getattr(self, name)))
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

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError for any setting astra cannot use or that would crop the image."""
        _as_shape(self.image_size)
        check_int("operator.num_angles", self.num_angles, 1)
        check_choice("operator.beam", self.beam, BEAMS)
        check_choice("operator.projector", self.projector, PROJECTORS[self.beam])
        check_positive("operator.pixel_size", self.pixel_size)
        check_positive("operator.detector_spacing", self.detector_spacing)
        check_positive("operator.angular_range", self.angular_range)
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
        count = check_int(
            "operator.detector_count", self.detector_count, 1, extra=" (a positive number of pixels)"
        )
        needed = self.required_detector_count()
        if count < needed:
            raise ConfigError(
                "operator.detector_count",
                count,
                f"must be at least {needed} to cover the image diagonal with detector_spacing="
                f"{self.detector_spacing} (or leave it unset)",
            )

    def _check_fan_distances(self) -> None:
        check_positive("operator.source_origin", self.source_origin)
        check_positive("operator.origin_detector", self.origin_detector)
        if self.source_origin <= self.radius:  # type: ignore[operator]
            raise ConfigError(
                "operator.source_origin",
                self.source_origin,
                f"must exceed the image's half diagonal {self.radius:.4g} (else the source lies inside "
                "the field of view)",
            )
