"""The forward-operator interface every inverse problem plugs into.

An operator is a map A from images (B, C, H, W) to measurements, linear unless it says otherwise
(``linear = False``: phase retrieval's Fourier magnitude). Methods only call ``forward``,
``adjoint``, ``pseudo_inverse`` and ``propagate_variance``; they never ask which operator they
hold. The evaluation scores an estimate after ``alignment``, which removes what the measurement
cannot tell apart (identity by default; a shift and a flip for Fourier magnitudes). Operators are ``nn.Module`` so that their buffers (masks, kernels, system
matrices) and parameters follow ``.to(device)``.

Measurements may be complex (k-space of the masked Fourier operator); images are always real.
The measurement space then carries the real inner product Re<u, v> = sum Re(u_i conj(v_i)), so a
complex element counts as two real ones (as in the discrepancy principle), and ``adjoint`` is the
adjoint for that inner product: a real image. :func:`dip_lightning.physics.checks.adjoint_check`
tests it for any operator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor, nn

from dip_lightning.physics.cgls import DEFAULT_DAMPING, DEFAULT_ITERATIONS, DEFAULT_TOLERANCE, cgls


class ForwardOperator(nn.Module, ABC):
    """A forward operator y = A x acting on batches of images (B, C, H, W), linear by default.

    Subclasses set ``image_shape`` (H, W) when it is fixed by construction (a mask, a CT geometry)
    and raise :class:`dip_lightning.errors.ConfigError` from ``check_image_shape`` for sizes they
    cannot handle, before any training starts.

    An operator may hold trainable ``nn.Parameter`` s (a gain, a blur kernel, coil sensitivities):
    a method that registers the operator fits them jointly with the image. The physics code never
    assumes there are none: where it only needs values (``measurement_shape``, the observation,
    ``observed_elements``, the held-out split and score) it calls the operator under
    ``torch.no_grad()``, and it finds the operator's device from its buffers and parameters.
    Such an operator is still linear in x for fixed parameters, and ``adjoint`` must stay the
    adjoint of ``forward`` for the current parameter values.
    """

    image_shape: tuple[int, int] | None = None
    linear: bool = True
    """False for a non-linear A (the Fourier magnitude of phase retrieval). Such an operator has
    no adjoint and no generic least-squares ``pseudo_inverse`` (CGLS refuses it), the dot-product
    test does not apply to it, and it overrides ``pseudo_inverse`` with a classical reconstruction
    of its own or goes without one. Methods only need ``forward``: they fit |A x - y|^2 by autograd."""
    baseline_name: str = "pseudo-inverse"
    """What ``pseudo_inverse`` computes, as the run summary names the baseline (FBP, HIO+ER)."""
    measurement_in_image_space: bool = False
    """True when the measurement lives on the image's pixel grid, element for element (identity,
    masks). Per-pixel quantities predicted in image space (the heteroscedastic log-precision of
    ``likelihood=nll``) are only meaningful for such operators."""

    cgls_iterations: int = DEFAULT_ITERATIONS
    """Most CGLS steps of the generic ``pseudo_inverse`` (see :mod:`dip_lightning.physics.cgls`)."""
    cgls_tolerance: float = DEFAULT_TOLERANCE
    """CGLS stops once the normal-equation residual falls to this fraction of its start."""
    cgls_damping: float = DEFAULT_DAMPING
    """Tikhonov weight of the generic ``pseudo_inverse``: minimises ||A x - y||^2 + damping ||x||^2."""

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Apply A to a batch of images (B, C, H, W)."""

    def adjoint(self, y: Tensor) -> Tensor:
        """Apply the exact adjoint A^T to a batch of measurements (for complex ones: for Re<.,.>).

        Every linear operator implements it; a non-linear one (``linear = False``) has none.
        """
        kind = "it is not linear" if not self.linear else "it does not implement one"
        raise NotImplementedError(f"{type(self).__name__} has no adjoint: {kind}")

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """An image-space estimate from a measurement, for display, the baseline and as a network input.

        The generic one is the damped least-squares solution by CGLS (``cgls_iterations`` steps at
        most, ``cgls_tolerance``, ``cgls_damping``), a constant (no gradient flows through it).
        Operators override it with a closed form or a classical method where they have one (the
        noisy image, bicubic upsampling, FBP, the zero-filled inverse FFT, HIO for phase
        retrieval); a non-linear operator must, as CGLS needs a linear one.
        """
        if not self.linear:
            raise NotImplementedError(
                f"{type(self).__name__} is not linear: it has no least-squares pseudo-inverse and "
                "gives no classical reconstruction of its own"
            )
        with torch.no_grad():
            return cgls(
                self,
                y,
                iterations=self.cgls_iterations,
                tolerance=self.cgls_tolerance,
                damping=self.cgls_damping,
            )

    def data_consistent(self, x: Tensor, y: Tensor) -> Tensor:
        """``x`` corrected to agree with the measurement: x + A^+ (y - A x).

        For an operator whose pseudo-inverse is exact this replaces the part of x that A sees by
        what y says and keeps the rest: with the masked Fourier operator, the measured k-space
        lines of x are put back to the measured values (ConvDecoder's data-consistency step).
        The job applies it to the reconstruction when ``data_consistency=true``.
        """
        with torch.no_grad():
            return x + self.pseudo_inverse(y - self.forward(x))

    def propagate_variance(self, variance: Tensor) -> Tensor:
        """Variance of A x for an image with pixelwise *independent* variance ``variance``.

        For a linear map this is (|A|^2) applied to the variance, where |A|^2 squares the magnitude
        of each entry; for a complex measurement it is E|delta y_i|^2, the sum of the variances of
        the real and the imaginary part. It is exact only for independent pixels, so it is not used
        for the calibration of Monte Carlo predictions, whose samples are spatially correlated
        (those push every sample through A and take the variance there). It serves to find the
        measurement elements that depend on the image at all
        (``dip_lightning.physics.holdout.observed_elements``). Operators that cannot do this raise
        NotImplementedError.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot propagate variances")

    def alignment(self, estimate: Tensor, truth: Tensor) -> Callable[[Tensor], Tensor]:
        """The map that brings ``estimate`` (B, C, H, W) closest to ``truth`` among the images the
        measurement cannot tell apart from it, as a function applicable to any image-space tensor
        of the same shape (the estimate, its variance maps).

        Scores against a ground truth are taken after it (PSNR, SSIM, the error map, the
        calibration against the truth). The default is the identity: A determines the image. An
        operator with trivial ambiguities overrides it (phase retrieval: a circular shift on the
        padded grid and the flip x(-r)). Must not build a graph and must stay on the device.
        """
        return no_alignment

    def align(self, estimate: Tensor, truth: Tensor) -> Tensor:
        """``estimate`` moved by :meth:`alignment` onto ``truth`` (itself by default)."""
        return self.alignment(estimate, truth)(estimate)

    def measurement_image(self, y: Tensor) -> Tensor:
        """A real image (B, C, h, w) that shows the measurement ``y``, for PNG files and loggers.

        The default is ``y`` itself when it is real (a noisy image, a sinogram) and its magnitude
        |y| when it is complex; operators whose measurements are better seen otherwise override
        it (the masked Fourier operator shows log(1 + |y|) of the centred k-space).
        """
        return y.abs() if y.is_complex() else y

    def simulate(self, x: Tensor) -> Tensor:
        """The noise-free measurement of a clean image under the true physics, for simulating
        observations.

        The same as ``forward`` for a known operator. An operator whose parameters are fitted with
        the image (blind deblurring: the kernel is estimated) measures with its current estimate in
        ``forward`` and with the true parameters here.
        """
        return self.forward(x)

    def optimizer_groups(self) -> list[dict]:
        """The optimiser parameter groups of the trainable parameters (none for a fixed operator).

        A group may carry its own settings (``lr``, ``weight_decay``), which override the method's
        optimiser for these parameters: a blur kernel made by a small network of its own learns at
        its own rate. Learning-rate schedules act on every group alike.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    def image_metrics(self, image: Tensor, ground_truth: Tensor) -> dict[str, float]:
        """Extra quality metrics of a reconstruction (B, C, H, W) against the truth.

        For problems whose solution is only defined up to an ambiguity the data cannot resolve
        (a shift in blind deblurring): such an operator reports metrics after removing it. The job
        writes them into metrics.json beside ``psnr`` and ``ssim`` (and, prefixed ``baseline_``,
        for the baseline). None by default.
        """
        return {}

    def operator_metrics(self) -> dict[str, float]:
        """Quality of fitted operator parameters against the true ones (a kernel's PSNR), for
        metrics.json; none by default."""
        return {}

    def measurement_shape(self, image_shape: tuple[int, int], channels: int = 1) -> tuple[int, ...]:
        """Shape (without batch) of the measurement of an image of size ``image_shape``."""
        probe = torch.zeros(1, channels, *image_shape, device=self._device())
        with torch.no_grad():
            return tuple(self.forward(probe).shape[1:])

    def check_image_shape(self, image_shape: tuple[int, int]) -> None:
        """Raise ConfigError if this operator cannot act on images of ``image_shape``."""

    def _device(self) -> torch.device:
        for tensor in list(self.buffers()) + list(self.parameters()):
            return tensor.device
        return torch.device("cpu")

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}"


def no_alignment(image: Tensor) -> Tensor:
    """The default :meth:`ForwardOperator.alignment`: the image as it is."""
    return image
