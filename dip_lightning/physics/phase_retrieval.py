"""Phase retrieval: y = |F(pad(x))|, the Fourier magnitude of the image zero-padded (oversampled).

The image (H, W) sits in the top-left corner of a zero grid of (s H, s W), s = ``oversampling``,
and the measurement is the magnitude of the grid's orthonormal 2D FFT, (B, C, s H, s W), real and
non-negative. s >= 2 makes the magnitudes the samples of the full autocorrelation, which for most
real images of known support determines the image up to the trivial ambiguities: a circular shift
of the padded grid and the flip x(-r) (a 180 degree rotation); both leave |F| unchanged exactly.
Those are removed before scoring (:meth:`PhaseRetrieval.alignment`, see
:mod:`dip_lightning.physics.alignment`).

The operator is not linear (``linear = False``): it has no adjoint, and its ``pseudo_inverse``
(the baseline, the image shown at the start and a possible network input) is the classical
reconstruction, Fienup's HIO followed by error reduction with support and non-negativity
(:mod:`dip_lightning.physics.hio`), from a random start seeded by ``seed``. Methods fit the
magnitudes, |A x - y|^2, by autograd through the FFT and the modulus.

Example:
    >>> import torch
    >>> op = PhaseRetrieval((16, 16), oversampling=2)
    >>> y = op(torch.rand(1, 1, 16, 16))
    >>> tuple(y.shape), y.dtype, bool((y >= 0).all())
    ((1, 1, 32, 32), torch.float32, True)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dip_lightning.errors import ConfigError, check_int
from dip_lightning.physics.alignment import circular_alignment
from dip_lightning.physics.base import ForwardOperator
from dip_lightning.physics.hio import check_hio_settings, hybrid_input_output

__all__ = ["PhaseRetrieval"]

OVERSAMPLING_HELP = (
    " (the image is zero-padded to oversampling times its side; 2 is the least that samples the "
    "whole autocorrelation)"
)


class PhaseRetrieval(ForwardOperator):
    """y = |F(pad(x))| with F the orthonormal 2D FFT of each channel on the padded grid.

    Args:
        image_shape: (H, W), or None to take it from the images.
        oversampling: integer s >= 2; the padded grid is (s H, s W).
        hio_beta: HIO feedback in (0, 1] (0.9: Fienup's usual value).
        hio_iterations: HIO iterations of the baseline, >= 0.
        er_iterations: error-reduction iterations after HIO, >= 0.
        restarts: random starts of the baseline; the one of least Fourier error is kept.
        seed: seed of the baseline's random starts.
    """

    linear = False
    baseline_name = "HIO+ER"

    def __init__(
        self,
        image_shape: tuple[int, int] | None = None,
        oversampling: int = 2,
        hio_beta: float = 0.9,
        hio_iterations: int = 1000,
        er_iterations: int = 200,
        restarts: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.oversampling = check_int("operator.oversampling", oversampling, 2, extra=OVERSAMPLING_HELP)
        check_hio_settings(hio_beta, hio_iterations, er_iterations, restarts)
        self.hio_beta = float(hio_beta)
        self.hio_iterations = int(hio_iterations)
        self.er_iterations = int(er_iterations)
        self.restarts = int(restarts)
        self.seed = check_int("operator.seed", seed, 0)
        self.image_shape = None
        if image_shape is not None:
            self.image_shape = (
                check_int("operator.image_shape", image_shape[0], 1),
                check_int("operator.image_shape", image_shape[1], 1),
            )
        self._baseline_cache: tuple[Tensor, Tensor] | None = None

    def padded_shape(self, image_shape: tuple[int, int]) -> tuple[int, int]:
        """The (s H, s W) grid of the Fourier transform."""
        return (self.oversampling * int(image_shape[0]), self.oversampling * int(image_shape[1]))

    def check_image_shape(self, image_shape: tuple[int, int]) -> None:
        shape = (int(image_shape[0]), int(image_shape[1]))
        if self.image_shape is not None and shape != self.image_shape:
            raise ConfigError(
                "operator.image_shape",
                shape,
                f"this operator was built for images of shape {self.image_shape}",
            )

    def forward(self, x: Tensor) -> Tensor:
        """|F(pad(x))|, (B, C, s H, s W), in x's real dtype."""
        rows, cols = self.padded_shape(x.shape[-2:])
        padded = F.pad(x, (0, cols - x.shape[-1], 0, rows - x.shape[-2]))
        return torch.fft.fft2(padded, norm="ortho").abs()

    def _image_shape_of(self, y: Tensor) -> tuple[int, int]:
        rows, cols = y.shape[-2:]
        if rows % self.oversampling or cols % self.oversampling:
            raise ValueError(
                f"a measurement of {self.oversampling}x oversampling has sides divisible by "
                f"{self.oversampling}, got {tuple(y.shape[-2:])}"
            )
        return (rows // self.oversampling, cols // self.oversampling)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """HIO then ER from the magnitudes ``y`` (the classical reconstruction; no gradient).

        Computed once per observation: the job asks for it for the baseline, the image logger
        and possibly the network input.
        """
        cached = self._baseline_cache
        if (
            cached is not None
            and cached[0].shape == y.shape
            and cached[0].device == y.device
            and bool(torch.equal(cached[0], y.detach()))
        ):
            return cached[1].to(y.dtype)
        estimate = hybrid_input_output(
            y.detach(),
            self._image_shape_of(y),
            beta=self.hio_beta,
            hio_iterations=self.hio_iterations,
            er_iterations=self.er_iterations,
            restarts=self.restarts,
            seed=self.seed,
        )
        self._baseline_cache = (y.detach().clone(), estimate)
        return estimate

    def alignment(self, estimate: Tensor, truth: Tensor) -> Callable[[Tensor], Tensor]:
        """The circular shift of the padded grid and the flip x(-r) that best match the truth."""
        return circular_alignment(estimate, truth, self.padded_shape(estimate.shape[-2:]), flip=True)

    def measurement_image(self, y: Tensor) -> Tensor:
        """log(1 + |y|) with frequency 0 in the centre (fftshift)."""
        return torch.log1p(torch.fft.fftshift(y.abs(), dim=(-2, -1)))

    def extra_repr(self) -> str:
        return (
            f"image_shape={self.image_shape}, oversampling={self.oversampling}, hio_beta={self.hio_beta:g}, "
            f"hio_iterations={self.hio_iterations}, er_iterations={self.er_iterations}, restarts={self.restarts}"
        )
