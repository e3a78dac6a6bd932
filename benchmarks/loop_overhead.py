"""Cost per step of the platform's Lightning loop against a plain PyTorch loop doing the same math.

Both loops fit the same network (built from the same config and seed) to the same observation:
perturbed noise input, forward, MSE through the operator, backward, Adam step, output EMA and PSNR
against the ground truth, as the reference DIP scripts do. The platform run uses its defaults for
logging (W&B offline unless --logger is given), evaluation and image logging. Repetitions are
interleaved (plain, platform, plain, ...) so that machine noise hits both alike.

    python benchmarks/loop_overhead.py --size 64 --steps 300 --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from dip_lightning.config import build, compose_config
from dip_lightning.data.datamodule import SingleObservationDataModule
from dip_lightning.metrics.image import fast_psnr
from dip_lightning.run import (
    build_callbacks,
    build_loggers,
    build_method,
    build_problem,
    quiet_third_party_logs,
)
from dip_lightning.tracking.wandb_setup import finish_wandb

RESULTS = Path(__file__).resolve().parent / "results"


class StepTimer(pl.Callback):
    """Records the wall time at the start of every training step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.times.append(time.perf_counter())


def per_step_ms(times: list[float], warmup: int) -> float:
    return 1000.0 * (times[-1] - times[warmup]) / (len(times) - 1 - warmup)


def platform_loop(overrides: list[str], steps: int, warmup: int) -> float:
    """ms per step of the platform's trainer (the job minus the final evaluation and saving)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([*overrides, f"trainer.max_steps={steps}"], tmp)
        pl.seed_everything(int(cfg.seed), verbose=False)
        problem = build_problem(cfg)
        method = build_method(cfg, problem)
        callbacks, _ = build_callbacks(cfg)
        timer = StepTimer()
        loggers = build_loggers(cfg, Path(tmp))
        trainer = build(cfg.trainer, logger=loggers or False, callbacks=[*callbacks, timer])
        trainer.fit(method, datamodule=SingleObservationDataModule())
        finish_wandb()
    return per_step_ms(timer.times, warmup)


def plain_loop(overrides: list[str], steps: int, warmup: int) -> float:
    """ms per step of a hand-written loop over the same network, input, loss and bookkeeping."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([*overrides, f"trainer.max_steps={steps}"], tmp)
    pl.seed_everything(int(cfg.seed), verbose=False)
    problem = build_problem(cfg)
    method = build_method(cfg, problem)  # same network and input as the platform run
    net, z = method.net, method.net_input
    optimizer = torch.optim.Adam(net.parameters(), lr=float(cfg.method.optimizer.lr))
    std = float(cfg.method.input.perturbation_std)
    decay = float(cfg.method.ema_decay)
    ema = torch.zeros_like(problem.ground_truth)
    times = []
    for step in range(steps):
        times.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        output = net(z + std * torch.randn_like(z))
        loss = (problem.operator(output) - problem.observation).pow(2).mean()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            ema.mul_(decay).add_(output, alpha=1 - decay)
            fast_psnr(output, problem.ground_truth)
            fast_psnr(ema / (1 - decay ** (step + 1)), problem.ground_truth)
    return per_step_ms(times, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--logger", default="wandb", help="logger config: wandb, csv or none")
    parser.add_argument("--task", default="denoising")
    parser.add_argument("--model", default="skip_light")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    quiet_third_party_logs()
    torch.set_num_threads(args.threads)
    overrides = [
        f"task={args.task}",
        f"logger={args.logger}",
        f"model={args.model}",
        f"data.size={args.size}",
    ]
    plain, platform = [], []
    for _ in range(args.repeats):
        plain.append(plain_loop(overrides, args.steps, args.warmup))
        platform.append(platform_loop(overrides, args.steps, args.warmup))
    rows = [
        ("plain PyTorch loop", statistics.median(plain), plain),
        (f"platform (Lightning, logger={args.logger})", statistics.median(platform), platform),
    ]
    ratio = rows[1][1] / rows[0][1]
    print(
        f"\n{args.task}, {args.model}, {args.size}x{args.size}, {args.steps} steps, {args.threads} threads, CPU\n"
    )
    print("| loop | median ms/step | runs (ms/step) |")
    print("|---|---|---|")
    for name, median, runs in rows:
        print(f"| {name} | {median:.1f} | {', '.join(f'{r:.1f}' for r in runs)} |")
    print(f"\nratio platform / plain: {ratio:.3f}")
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "loop_overhead_cpu.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["size", "model", "logger", "plain_ms", "platform_ms", "ratio"])
        writer.writerow(
            [args.size, args.model, args.logger, f"{rows[0][1]:.2f}", f"{rows[1][1]:.2f}", f"{ratio:.4f}"]
        )


if __name__ == "__main__":
    main()
