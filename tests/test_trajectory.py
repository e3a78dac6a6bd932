"""The trajectory of a run's outputs, what a training step hands to the callbacks, complex
measurements through the method's losses and metrics, and the import structure behind them."""

from __future__ import annotations

import io
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

from dip_lightning.job.run import build_method, build_problem
from dip_lightning.methods.base import DeepImagePrior
from dip_lightning.methods.evaluation import evaluate_prediction, measurement_calibration_pairs
from dip_lightning.methods.prediction import Prediction, measurement_variance
from dip_lightning.methods.trajectory import Trajectory
from dip_lightning.metrics.running import RunningMoments
from dip_lightning.physics.base import ForwardOperator
from dip_lightning.physics.identity import Identity
from dip_lightning.physics.noise import GaussianNoise
from dip_lightning.physics.observation import InverseProblem, make_observation
from dip_lightning.tracking import step_output
from dip_lightning.tracking.image_logger import ImageLogger

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images(steps: int, batch: int = 1, seed: int = 0) -> Tensor:
    return torch.rand(steps, batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def problem(truth: bool = True) -> InverseProblem:
    image = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(7))
    made = make_observation(image, Identity(), GaussianNoise(0.1), seed=0)
    return made if truth else InverseProblem(**{**made.__dict__, "ground_truth": None})


# ------------------------------------------------------------------------------ trajectory


@pytest.mark.parametrize("replicates", [1, 3])
def test_state_dict_round_trip_continues_identically(replicates):
    outputs = images(12, replicates)
    original = Trajectory(problem(), 0.9, replicates)
    for step in range(6):
        original.record(step, outputs[step])
    original.add_evaluation(5, {"psnr": 12.0})
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    resumed = Trajectory(problem(), 0.9, replicates)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for step in range(6, 12):
        a, b = original.record(step, outputs[step]), resumed.record(step, outputs[step])
        assert torch.equal(a.ema, b.ema) and torch.equal(a.misfit, b.misfit)
    assert resumed.psnr_curves() == original.psnr_curves()
    assert resumed.peak_summary() == original.peak_summary()
    assert torch.equal(resumed.best_image, original.best_image)
    assert len(original.psnr_curves().get("psnr_replicates", [None] * 3)) == 3
    with pytest.raises(ValueError, match="replicates"):
        Trajectory(problem(), 0.9, replicates + 1).load_state_dict(original.state_dict())


def test_peak_and_replicates_follow_the_mean_output():
    truth = problem()
    trajectory = Trajectory(truth, 0.5, replicates=2)
    noisy = truth.ground_truth + 0.3 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    clean = truth.ground_truth.expand(2, 1, 8, 8)
    for step, batch in enumerate((noisy, clean, noisy)):
        record = trajectory.record(step, batch)
    assert torch.equal(record.image, noisy.mean(dim=0, keepdim=True))
    assert trajectory.peak_summary()["peak_step"] == 1
    assert torch.equal(trajectory.best_image, truth.ground_truth)
    assert [peak["peak_step"] for peak in trajectory.replicate_peaks()] == [1, 1]
    assert Trajectory(problem(truth=False), 0.5).peak_summary() == {}


def test_training_step_returns_the_step_outputs(small_config):
    cfg = small_config("data.size=32")
    method = build_method(cfg, build_problem(cfg))
    outputs = method.training_step(None, 0)
    assert set(outputs) == {
        step_output.LOSS,
        step_output.IMAGE,
        step_output.MISFIT,
        step_output.PSNR,
        step_output.EMA,
        step_output.EMA_LAG,
    }
    assert outputs[step_output.EMA_LAG] == 99  # decay 0.99: the mean age of the averaged outputs
    assert outputs[step_output.LOSS].requires_grad
    assert not outputs[step_output.IMAGE].requires_grad and outputs[step_output.IMAGE].shape == (1, 1, 32, 32)
    assert outputs[step_output.MISFIT].dim() == 0 and outputs[step_output.PSNR].dim() == 0
    assert torch.equal(outputs[step_output.EMA], method.trajectory.ema.value)
    assert torch.equal(outputs[step_output.IMAGE], method.trajectory.latest_image)


def test_the_image_logger_reads_the_step_outputs():
    logged: dict[str, object] = {}
    logger = object.__new__(WandbLogger)  # only its log_image is used
    logger.log_image = lambda key, images, step: logged.update({key: step})
    trainer = SimpleNamespace(loggers=[logger], global_step=30, global_rank=0)
    outputs = {step_output.IMAGE: torch.rand(1, 1, 8, 8), step_output.EMA: torch.rand(1, 1, 8, 8)}
    ImageLogger(every_n_steps=30).on_train_batch_end(
        trainer, SimpleNamespace(problem=problem()), outputs, None, 0
    )
    assert logged == dict.fromkeys(
        ("images/output", "images/output_ema", "images/pseudo_inverse", "images/ground_truth"), 30
    )
    with pytest.raises(RuntimeError, match="ImageLogger needs the output image"):
        ImageLogger(every_n_steps=30).on_train_batch_end(trainer, None, {}, None, 0)


# ------------------------------------------------------------------------------ complex measurements


class Fourier(ForwardOperator):
    """The orthonormal 2D Fourier transform: complex measurements, as MRI k-space."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.fft.fft2(x, norm="ortho")

    def adjoint(self, y: Tensor) -> Tensor:
        return torch.fft.ifft2(y, norm="ortho").real


def complex_problem() -> InverseProblem:
    truth = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(3)
    noise = torch.complex(torch.randn(1, 1, 8, 8, generator=gen), torch.randn(1, 1, 8, 8, generator=gen))
    observation = Fourier()(truth) + 0.05 * noise
    return InverseProblem(Fourier(), observation, truth, GaussianNoise(0.05), "k-space", (8, 8), 1)


def test_complex_residuals_enter_losses_and_metrics_as_squared_magnitudes():
    problem_ = complex_problem()
    method = DeepImagePrior(net=lambda **_: torch.nn.Identity(), optimizer=torch.optim.Adam)
    method.problem = problem_
    image = torch.rand(1, 1, 8, 8, requires_grad=True)
    residual = Fourier()(image) - problem_.observation
    loss = method.data_fidelity(image, None)
    assert not loss.is_complex()
    torch.testing.assert_close(loss, (residual.real.square() + residual.imag.square()).mean())
    loss.backward()
    assert torch.isfinite(image.grad).all()

    samples = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    variance = measurement_variance(samples, Fourier())
    measured = Fourier()(samples)
    expected = (measured - measured.mean(dim=0, keepdim=True)).abs().square().mean(dim=0, keepdim=True)
    assert not variance.is_complex()
    torch.testing.assert_close(variance, expected)
    moments = RunningMoments()
    for sample in measured:
        moments.update(sample)
    torch.testing.assert_close(moments.variance.float(), expected[0])
    torch.testing.assert_close(moments.mean.to(measured.dtype), measured.mean(dim=0))

    mean, spread = samples.mean(0, keepdim=True), samples.var(0, keepdim=True)
    prediction = Prediction(mean, spread, torch.zeros(1, 1, 8, 8), measurement_epistemic=variance)
    residual_sq, _ = measurement_calibration_pairs(prediction, problem_)
    assert not residual_sq.is_complex()
    assert "uce_observation" in evaluate_prediction(prediction, problem_)


def test_real_residuals_give_the_same_numbers_as_plain_squares():
    problem_ = problem()
    method = DeepImagePrior(net=lambda **_: torch.nn.Identity(), optimizer=torch.optim.Adam)
    method.problem = problem_
    image = torch.rand(1, 1, 8, 8)
    expected = (image - problem_.observation).pow(2).mean()
    assert torch.equal(method.data_fidelity(image, None), expected)
    samples = torch.rand(6, 3, generator=torch.Generator().manual_seed(5)).double()
    moments = RunningMoments()
    moments.update_batch(samples)
    assert torch.equal(moments.variance, ((samples - samples.mean(0)).square().sum(0)) / 6)


# ------------------------------------------------------------------------------ imports


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        (
            "dip_lightning.stopping.callback, dip_lightning.stopping.monitor, "
            "dip_lightning.tracking.image_logger, dip_lightning.tracking.progress",
            "dip_lightning.methods",
        ),
        (
            "dip_lightning.methods.resume_state, dip_lightning.methods.trajectory",
            "dip_lightning.methods.base",
        ),
    ],
    ids=["stopping-and-tracking", "record-without-method"],
)
def test_the_callbacks_and_the_trajectory_import_no_method(modules, forbidden):
    code = (
        f"import sys, {modules}; "
        f"found = [m for m in sys.modules if m.startswith({forbidden!r})]; "
        "print(found); sys.exit(1 if found else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
