"""Fienup's hybrid input-output (HIO) and error reduction (ER): the classical phase retrieval.

Both alternate between the Fourier domain, where the measured magnitudes replace those of the
current estimate (its phase is kept), and the object domain, where the constraints apply: the
image is real, non-negative and zero outside its support (the H x W box of the padded grid).

* ER (a projection onto both sets in turn) sets the violating pixels to zero; it never increases
  the Fourier error but stalls in local minima.
* HIO (Fienup, Appl. Opt. 21, 1982) keeps the previous input where the constraints are violated
  and pushes it away by ``beta`` times the new output, g' = g - beta g_fourier, which lets it
  leave those minima; beta around 0.9 is the usual choice.

The classical recipe, followed here: a seeded random start in the support, ``hio_iterations`` of
HIO, then ``er_iterations`` of ER to settle on a point satisfying the object constraints. With
``restarts`` > 1 the whole recipe runs from that many random starts (one batch) and the
estimate of least Fourier error ||(|F g| - y)|| is kept, as practitioners do against stagnation.

Example:
    >>> import torch
    >>> image = torch.zeros(1, 1, 8, 8); image[..., 2:5, 3:6] = 1.0
    >>> y = torch.fft.fft2(torch.nn.functional.pad(image, (0, 8, 0, 8)), norm="ortho").abs()
    >>> estimate = hybrid_input_output(y, (8, 8), beta=0.9, hio_iterations=200, er_iterations=50, seed=0)
    >>> tuple(estimate.shape)
    (1, 1, 8, 8)
"""

from __future__ import annotations

import torch
from torch import Tensor

from dip_lightning.errors import ConfigError, check_in_range, check_int

__all__ = ["check_hio_settings", "fourier_error", "hybrid_input_output"]


def check_hio_settings(beta: float, hio_iterations: int, er_iterations: int, restarts: int) -> None:
    """Raise ConfigError naming the first bad setting (the operator's names)."""
    if check_in_range("operator.hio_beta", beta, 0.0, 1.0, high_open=False) == 0.0:
        raise ConfigError("operator.hio_beta", beta, "must be a number in (0, 1] (0.9 is usual)")
    check_int("operator.hio_iterations", hio_iterations, 0)
    check_int("operator.er_iterations", er_iterations, 0)
    check_int("operator.restarts", restarts, 1)


def _fourier_projection(image: Tensor, magnitudes: Tensor) -> Tensor:
    """The real image whose transform has the measured magnitudes and the phase of ``image``'s."""
    spectrum = torch.fft.fft2(image, norm="ortho")
    phase = torch.sgn(spectrum)
    # Where the spectrum vanishes its phase is undefined: take 1 (a real, positive coefficient).
    phase = torch.where(spectrum.abs() > 0, phase, torch.ones_like(phase))
    return torch.fft.ifft2(magnitudes * phase, norm="ortho").real


def fourier_error(image: Tensor, magnitudes: Tensor) -> Tensor:
    """||(|F g| - y)|| per image of the batch (the padded grid g), shape (B,)."""
    residual = torch.fft.fft2(image, norm="ortho").abs() - magnitudes
    return torch.linalg.vector_norm(residual.flatten(start_dim=1), dim=1)


@torch.no_grad()
def hybrid_input_output(
    magnitudes: Tensor,
    image_shape: tuple[int, int],
    *,
    beta: float = 0.9,
    hio_iterations: int = 1000,
    er_iterations: int = 200,
    restarts: int = 1,
    seed: int = 0,
) -> Tensor:
    """HIO then ER from the Fourier magnitudes (B, C, P, Q) of images (B, C, H, W) padded to P x Q.

    Returns the estimates (B, C, H, W): the support box of the final ER iterate. Each image and
    channel is retrieved on its own. The random starts are drawn from a CPU generator seeded with
    ``seed``, so the result depends on the seed alone.
    """
    check_hio_settings(beta, hio_iterations, er_iterations, restarts)
    height, width = image_shape
    batch, channels, rows, cols = magnitudes.shape
    work = torch.float64 if magnitudes.dtype == torch.float64 else torch.float32
    measured = magnitudes.to(work).clamp_min(0)
    measured = measured.repeat_interleave(restarts, dim=0)  # (B * restarts, C, P, Q)
    support = torch.zeros(rows, cols, dtype=torch.bool, device=magnitudes.device)
    support[:height, :width] = True
    generator = torch.Generator().manual_seed(int(seed))
    start = torch.rand(measured.shape, generator=generator, dtype=work).to(magnitudes.device)
    # Scale the start to the energy the magnitudes prescribe (Parseval, orthonormal FFT).
    energy = measured.square().sum(dim=(-2, -1), keepdim=True)
    start = start * support
    start = start * (energy / start.square().sum(dim=(-2, -1), keepdim=True).clamp_min(1e-30)).sqrt()
    image = start
    for _ in range(int(hio_iterations)):
        output = _fourier_projection(image, measured)
        keep = support & (output >= 0)
        image = torch.where(keep, output, image - beta * output)
    for _ in range(int(er_iterations)):
        output = _fourier_projection(image, measured)
        image = torch.where(support & (output >= 0), output, torch.zeros_like(output))
    image = torch.where(support & (image >= 0), image, torch.zeros_like(image))
    if restarts > 1:
        errors = fourier_error(image, measured).view(batch, restarts)
        best = errors.argmin(dim=1)
        image = image.view(batch, restarts, channels, rows, cols)[torch.arange(batch), best]
    return image[..., :height, :width].to(magnitudes.dtype)
