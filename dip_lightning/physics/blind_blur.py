"""Blind deblurring after SelfDeblur (Ren et al., CVPR 2020): the kernel is fitted with the image.

The measurement is simulated with a true kernel (``simulate``); the method never sees it. The
operator's ``forward`` blurs with an estimate made by a small fully connected generator of its
own: a fixed random code z (200 numbers, uniform in [0, 0.1), as the reference's input) through
Linear(200, 1000), ReLU6, Linear(1000, K^2) and a softmax, so that the estimate is non-negative and
sums to one by construction. The generator's weights are ``nn.Parameter`` s: a method registers the
operator (``DeepImagePrior.register_operator``) and fits them with the image, at the operator's
own learning rate (``kernel_lr``, declared through ``optimizer_groups``; the reference's 1e-4
against the image network's 1e-2), and saves them in its checkpoints.

The boundary is the non-blind operator's (:mod:`blur`, ``valid`` by default, as in the reference).
Without the kernel there is no Wiener filter: the baseline is the blurry image. The problem is
defined up to a shift only, so the metrics are shift-aligned (``image_metrics``), and
``operator_metrics`` reports the kernel estimate's PSNR against the true kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dip_lightning.errors import ConfigError, check_int, check_positive
from dip_lightning.metrics.alignment import kernel_psnr
from dip_lightning.physics.blur import Blur, blur, check_kernel_fits
from dip_lightning.physics.kernels import check_kernel_size

__all__ = ["BlindBlur", "KernelGenerator"]

CODE_SCALE = 0.1  # the reference draws its input uniform in [0, 1) times 1/10


class KernelGenerator(nn.Module):
    """A fixed code through a two-layer perceptron to a softmax over the K x K kernel pixels."""

    def __init__(self, side: int, code_size: int = 200, hidden: int = 1000, seed: int = 0) -> None:
        super().__init__()
        self.side = side
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.register_buffer("code", torch.rand(code_size, generator=generator) * CODE_SCALE)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))  # nn.Linear draws its initial weights from the global stream
            self.net = nn.Sequential(
                nn.Linear(code_size, hidden), nn.ReLU6(), nn.Linear(hidden, side * side), nn.Softmax(dim=-1)
            )

    def forward(self) -> Tensor:
        return self.net(self.code).view(self.side, self.side)


class BlindBlur(Blur):
    """Blur whose kernel is estimated by a :class:`KernelGenerator` (see the module docstring).

    Args:
        kernel, kernel_size, kernel_seed, gaussian_sigma, disk_radius, motion_extent, kernel_path:
            the true kernel that simulates the measurement (as for :class:`Blur`).
        estimate_size: the odd side of the estimated kernel (None: the true kernel's side, as the
            reference assumes the size known).
        boundary: ``valid`` (default) or ``circular``.
        kernel_lr: the learning rate of the generator's weights (None: the method's own).
        code_size, hidden: the generator's input and hidden widths (200 and 1000 in the reference).
        init_seed: the seed of the generator's code and initial weights.
        max_shift: the largest shift the aligned metrics try (None: the estimate's radius).
        image_shape: (H, W), checked against both kernels when given.
    """

    def __init__(
        self,
        kernel: str = "motion",
        kernel_size: int = 13,
        kernel_seed: int = 0,
        gaussian_sigma: float = 2.0,
        disk_radius: float | None = None,
        motion_extent: float = 0.8,
        kernel_path: str | None = None,
        estimate_size: int | None = None,
        boundary: str = "valid",
        kernel_lr: float | None = 1e-4,
        code_size: int = 200,
        hidden: int = 1000,
        init_seed: int = 0,
        max_shift: int | None = None,
        image_shape: tuple[int, int] | None = None,
    ) -> None:
        self.estimate_side = (
            None if estimate_size is None else check_kernel_size(estimate_size, "operator.estimate_size")
        )
        super().__init__(
            kernel=kernel,
            kernel_size=kernel_size,
            kernel_seed=kernel_seed,
            gaussian_sigma=gaussian_sigma,
            disk_radius=disk_radius,
            motion_extent=motion_extent,
            kernel_path=kernel_path,
            boundary=boundary,
            baseline="blurry",
            max_shift=max_shift,
        )
        side = self.estimate_side or self.kernel_side
        if self.boundary == "valid" and side < self.kernel_side:
            raise ConfigError(
                "operator.estimate_size",
                estimate_size,
                f"must be at least the true kernel's side {self.kernel_side} with boundary=valid (a "
                f"smaller kernel would measure pixels outside the blurry image); use null for the true side",
            )
        self.estimate_side = side
        if max_shift is None:
            self.max_shift = side // 2
        self.kernel_lr = None if kernel_lr is None else float(check_positive("operator.kernel_lr", kernel_lr))
        self.generator = KernelGenerator(
            side,
            check_int("operator.code_size", code_size, 1),
            check_int("operator.hidden", hidden, 1),
            seed=int(init_seed),
        )
        if image_shape is not None:
            self.check_image_shape(tuple(image_shape))
            self.image_shape = (int(image_shape[0]), int(image_shape[1]))

    def current_kernel(self) -> Tensor:
        return self.generator()

    def simulate(self, x: Tensor) -> Tensor:
        """The measurement under the true kernel, cropped to the estimate's valid region when the
        estimate is larger (``valid``: a larger kernel measures fewer pixels)."""
        true = blur(x, self.kernel, self.boundary)
        crop = (self.estimate_side - self.kernel_side) // 2
        if self.boundary == "circular" or crop == 0:
            return true
        return true[..., crop:-crop, crop:-crop]

    def check_image_shape(self, image_shape: tuple[int, int]) -> None:
        if self.estimate_side is not None:
            check_kernel_fits(self.estimate_side, image_shape, "operator.estimate_size", self.estimate_side)
        super().check_image_shape(image_shape)

    def blurry_image(self, y: Tensor) -> Tensor:
        if self.boundary == "circular":
            return y
        p = self.estimate_side // 2
        return torch.nn.functional.pad(y, (p, p, p, p), mode="replicate")

    def optimizer_groups(self) -> list[dict]:
        """The generator's weights, at ``kernel_lr`` and without weight decay (the reference's
        plain Adam; a weight prior on them has no meaning)."""
        group: dict = {"params": list(self.generator.parameters()), "weight_decay": 0.0}
        if self.kernel_lr is not None:
            group["lr"] = self.kernel_lr
        return [group]

    def operator_metrics(self) -> dict[str, float]:
        with torch.no_grad():
            return {"kernel_psnr": kernel_psnr(self.current_kernel().detach().cpu(), self.kernel.cpu())}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, estimate_side={self.estimate_side}, kernel_lr={self.kernel_lr}"
