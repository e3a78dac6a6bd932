"""Seconds of exact GP regression with the DIP's infinite-width kernel, and the PSNR it reaches.

The prior is the Gaussian-process limit of our default skip network (``conf/model/skip.yaml``:
5 scales, bilinear upsampling, LeakyReLU, batch norm, sigmoid head); the image is a centre crop
of scikit-image's ``camera`` with Gaussian noise of standard deviation ``--sigma``. Rows:

* ``kernel``: the architecture's covariance on the regression grid (once per image size and
  architecture; the posterior rows below reuse it);
* ``denoising``: closed form in Fourier space (periodic prior on the image), noise level known or
  fitted by maximum marginal likelihood;
* ``inpainting``: half the pixels missing at random; CG on a torus twice the image's size, noise
  level known or fitted (Lanczos quadrature), per-pixel variance from ``--samples`` posterior
  samples (Matheron's rule).

    python benchmarks/gp_speed.py                 # 128 px, sigma 0.1
    python benchmarks/gp_speed.py --size 64 --samples 16 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from dip_lightning.data.sources import PackageImage
from dip_lightning.gp.prior import GPPrior
from dip_lightning.gp.regression import GPSettings, posterior
from dip_lightning.metrics.image import psnr
from dip_lightning.physics.identity import Identity
from dip_lightning.physics.inpainting import Inpainting


def _row(name: str, seconds: float, post: object | None, truth: torch.Tensor, extra: str = "") -> None:
    if post is None:
        print(f"{name:<34} {seconds:8.2f} s")
        return
    quality = float(psnr(post.mean.clamp(0, 1), truth))  # type: ignore[attr-defined]
    std = float(post.variance.sqrt().mean()) if post.variance is not None else float("nan")  # type: ignore[attr-defined]
    print(
        f"{name:<34} {seconds:8.2f} s   PSNR {quality:6.2f} dB   noise_std {post.noise_std:.4f}"  # type: ignore[attr-defined]
        f"   prior_scale {post.prior_scale:.3g}   mean posterior std {std:.4f}"  # type: ignore[attr-defined]
        f"   CG iterations {post.cg_iterations}{extra}"  # type: ignore[attr-defined]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    truth = PackageImage("camera", size=args.size).load().image[None].double()
    generator = torch.Generator().manual_seed(args.seed)
    noisy = truth + args.sigma * torch.randn(truth.shape, generator=generator, dtype=torch.float64)
    print(f"camera {args.size}x{args.size}, sigma {args.sigma}, torch threads {torch.get_num_threads()}")
    print(f"{'noisy observation':<34} PSNR {float(psnr(noisy, truth)):6.2f} dB")

    prior = GPPrior.from_architecture()
    start = time.perf_counter()
    prior.covariance((args.size, args.size))
    prior.covariance((2 * args.size, 2 * args.size))
    _row("kernel (image and padded grid)", time.perf_counter() - start, None, truth)

    for label, noise in (("known", args.sigma), ("fitted", None)):
        start = time.perf_counter()
        post = posterior(prior, Identity(), noisy, noise)
        _row(f"denoising, noise {label}", time.perf_counter() - start, post, truth)

    mask = Inpainting((args.size, args.size), kind="random", missing_fraction=0.5, seed=args.seed)
    observed = mask(noisy)
    holes = mask.mask == 0
    settings = GPSettings(num_samples=args.samples, seed=args.seed)
    for label, noise in (("known", args.sigma), ("fitted", None)):
        start = time.perf_counter()
        post = posterior(prior, mask, observed, noise, settings)
        seconds = time.perf_counter() - start
        var = post.variance
        ratio = float(var[holes.expand_as(var)].mean() / var[~holes.expand_as(var)].mean())
        _row(f"inpainting 50%, noise {label}", seconds, post, truth, f"   var holes/observed {ratio:.2f}")


if __name__ == "__main__":
    main()
