"""Per-step cost of each early-stopping criterion, against a typical CPU DIP step.

A criterion runs after every optimisation step, so it must stay a small fraction of that step.
Prints one row per criterion and image size: milliseconds per update and the ratio against a
40 ms reference step. Runs in a few seconds on one CPU thread; pass --device cuda to time a GPU
(then the reference ratio is only indicative).

    python benchmarks/stopping_overhead_micro.py [--device cpu|cuda] [--updates 200]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from dip_lightning.stopping.base import StoppingCriterion
from dip_lightning.stopping.discrepancy import DiscrepancyPrinciple
from dip_lightning.stopping.emv import ExponentialMovingVariance
from dip_lightning.stopping.fixed import FixedSteps
from dip_lightning.stopping.oracle import Oracle
from dip_lightning.stopping.wmv import WindowedMovingVariance

REFERENCE_STEP_MS = 40.0
SIZES = (64, 256)


def _discrepancy() -> DiscrepancyPrinciple:
    criterion = DiscrepancyPrinciple(tau=1.1)
    criterion.set_noise_level(1e-6, 1)  # never met: measure the steady state, not the stop
    return criterion


CRITERIA: dict[str, Callable[[], StoppingCriterion]] = {
    "fixed": FixedSteps,
    "wmv (W=100)": lambda: WindowedMovingVariance(window=100, patience=10**9),
    "emv (a=0.1)": lambda: ExponentialMovingVariance(alpha=0.1, patience=10**9),
    "discrepancy": _discrepancy,
    "oracle": Oracle,
}


def time_updates(
    make: Callable[[], StoppingCriterion], size: int, updates: int, device: torch.device
) -> float:
    """Milliseconds per update after the state is allocated and the WMV window is full."""
    pool = torch.rand(8, 1, 1, size, size, device=device)
    misfit = torch.tensor(1.0, device=device)
    psnr = torch.tensor(25.0, device=device)
    criterion = make()
    warmup = 110  # fills a 100-step window so the timed updates include scoring and eviction
    for step in range(warmup):
        criterion.update(step, pool[step % 8], misfit=misfit, psnr=psnr)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for step in range(warmup, warmup + updates):
        criterion.update(step, pool[step % 8], misfit=misfit, psnr=psnr)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3 / updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print(f"device={device} threads={torch.get_num_threads()} updates={args.updates}")
    print(f"{'criterion':<14} {'size':>9} {'ms/update':>10} {'vs 40 ms step':>14}")
    for size in SIZES:
        for name, make in CRITERIA.items():
            ms = time_updates(make, size, args.updates, device)
            print(f"{name:<14} {size:>4}x{size:<4} {ms:>10.3f} {ms / REFERENCE_STEP_MS:>13.2%}")


if __name__ == "__main__":
    main()
