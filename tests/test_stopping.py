"""Early-stopping criteria, the noise-level estimate and the Lightning callback."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor

from dip_lightning.errors import ConfigError
from dip_lightning.metrics.image import fast_psnr
from dip_lightning.stopping.base import Needs, StoppingCriterion, device_scalar
from dip_lightning.stopping.callback import StoppingCallback
from dip_lightning.stopping.discrepancy import (
    NOISE_ESTIMATED,
    NOISE_FROM_CONFIG,
    NOISE_FROM_PROBLEM,
    DiscrepancyPrinciple,
)
from dip_lightning.stopping.emv import ExponentialMovingVariance
from dip_lightning.stopping.fixed import FixedSteps
from dip_lightning.stopping.monitor import StoppingMonitor
from dip_lightning.stopping.noise_level import estimate_noise_std, haar_diagonal_detail
from dip_lightning.stopping.oracle import Oracle
from dip_lightning.stopping.wmv import WindowedMovingVariance
from dip_lightning.tracking.step_output import IMAGE, MISFIT, PSNR

torch.set_num_threads(1)

NOISE_MINIMUM = 300  # the step where the synthetic outputs are least noisy
STEPS = 700


def noisy_sequence(steps: int = STEPS, size: int = 16, seed: int = 0) -> Tensor:
    """Outputs x_t = clean + s(t) * fresh noise, with s smallest at NOISE_MINIMUM and rising after."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.rand(1, 1, size, size, generator=gen)
    noise = torch.randn(steps, 1, 1, size, size, generator=gen)
    t = torch.arange(steps, dtype=torch.float32)
    scale = 0.02 + 0.2 * (t - NOISE_MINIMUM).abs() / NOISE_MINIMUM
    return clean + scale.view(-1, 1, 1, 1, 1) * noise


def run(criterion: StoppingCriterion, images: Tensor, **per_step: list) -> int | None:
    """Feed ``images`` step by step; return the step at which the criterion asked to stop."""
    for step in range(images.shape[0]):
        extra = {key: values[step] for key, values in per_step.items()}
        if criterion.update(step, images[step], **extra):
            return step
    return None


def windowed_variance(images: Tensor, newest: int, window: int) -> float:
    """The WMV score computed directly: mean over pixels of the variance across the window."""
    stack = images[newest - window + 1 : newest + 1].double()
    return float(stack.var(dim=0, unbiased=False).mean())


# ------------------------------------------------------------------------------ ES-WMV / ES-EMV


def test_wmv_detects_the_variance_minimum_and_stops_after_patience() -> None:
    images = noisy_sequence()
    window, patience, check_every = 20, 200, 10
    criterion = WindowedMovingVariance(window, patience, check_every=check_every)
    stopped = run(criterion, images)

    detected = criterion.detected_step
    assert stopped is not None and detected is not None
    # The window is centred on the quietest step when its newest step is NOISE_MINIMUM + window/2.
    assert abs(detected - (NOISE_MINIMUM + window // 2)) <= 8
    scores = {t: windowed_variance(images, t, window) for t in range(window - 1, stopped + 1)}
    assert detected == min(scores, key=scores.__getitem__)
    assert criterion.best_score == pytest.approx(scores[detected], rel=1e-9)
    assert detected + patience <= stopped < detected + patience + check_every
    assert torch.equal(criterion.detected_image, images[detected])


def test_wmv_has_no_detection_before_the_window_is_full() -> None:
    images = noisy_sequence(steps=10)
    criterion = WindowedMovingVariance(window=20, patience=5)
    assert run(criterion, images) is None
    assert criterion.detected_step is None
    assert criterion.detected_image is None
    assert criterion.last_score is None
    assert criterion.score_history == []


def emv_reference(images: Tensor, alpha: float, warmup: int) -> dict[int, float]:
    """EMV scores from a plain float64 loop over the documented recursion."""
    mean = images[0].double().clone()
    var = torch.zeros_like(mean)
    scores = {}
    for t in range(1, images.shape[0]):
        delta = images[t].double() - mean
        mean = mean + alpha * delta
        var = (1 - alpha) * (var + alpha * delta**2)
        if t >= warmup:
            scores[t] = float(var.mean())
    return scores


def test_emv_detects_the_variance_minimum_and_stops_after_patience() -> None:
    images = noisy_sequence()
    alpha, patience, check_every = 0.1, 200, 10
    criterion = ExponentialMovingVariance(alpha, patience, check_every=check_every)
    stopped = run(criterion, images)

    detected = criterion.detected_step
    assert stopped is not None and detected is not None
    # The exponential average lags by about (1 - alpha) / alpha = 9 steps.
    assert abs(detected - (NOISE_MINIMUM + 9)) <= 10
    scores = emv_reference(images[: stopped + 1], alpha, criterion.warmup)
    assert detected == min(scores, key=scores.__getitem__)
    assert criterion.last_score == pytest.approx(scores[stopped], rel=1e-9)
    assert detected + patience <= stopped < detected + patience + check_every
    assert torch.equal(criterion.detected_image, images[detected])


def test_emv_ignores_scores_during_warmup() -> None:
    images = noisy_sequence(steps=40)
    criterion = ExponentialMovingVariance(alpha=0.5, patience=1000, warmup=30)
    run(criterion, images)
    assert criterion.detected_step is not None and criterion.detected_step >= 30
    assert [step for step, _ in criterion.score_history] == [30]


def test_wmv_running_sums_do_not_drift() -> None:
    # A large offset with a small spread is where sum/sum-of-squares updates lose precision.
    window = 50
    gen = torch.Generator().manual_seed(1)
    criterion = WindowedMovingVariance(window=window, patience=10_000)
    recent: list[Tensor] = []
    checked = 0
    for step in range(5000):
        image = 100.0 + 0.01 * torch.randn(1, 1, 8, 8, generator=gen)
        criterion.update(step, image)
        recent = [*recent[-(window - 1) :], image]
        # Check between the periodic exact recomputations too (they happen when step+1 % window == 0).
        if step in (window - 1, 1000, 2513, 4987, 4999):
            expected = float(torch.stack(recent).double().var(dim=0, unbiased=False).mean())
            assert criterion.last_score == pytest.approx(expected, rel=1e-6, abs=0)
            checked += 1
    assert checked == 5


def test_score_history_is_sampled() -> None:
    images = noisy_sequence(steps=120)
    criterion = WindowedMovingVariance(window=10, patience=1000, history_every=25)
    run(criterion, images)
    history = criterion.score_history
    assert [step for step, _ in history] == [25, 50, 75, 100]
    assert all(isinstance(value, float) for _, value in history)
    assert history[1][1] == pytest.approx(windowed_variance(images, 50, 10), rel=1e-9)


# ------------------------------------------------------------------- discrepancy, oracle, fixed


def test_discrepancy_stops_at_the_first_step_below_tau_delta() -> None:
    images = noisy_sequence(steps=200)
    misfits = [5.0 * math.exp(-t / 40) + 0.5 for t in range(200)]
    criterion = DiscrepancyPrinciple(tau=1.1, check_every=10)
    criterion.set_noise_level(0.1, 100)  # delta = 0.1 * sqrt(100) = 1, bound 1.1
    assert criterion.threshold == pytest.approx(1.1)
    first = next(t for t, m in enumerate(misfits) if m <= 1.1)
    as_tensors = [torch.tensor(m) for m in misfits]
    stopped = run(criterion, images, misfit=as_tensors)

    assert criterion.detected_step == first
    assert stopped is not None and first <= stopped < first + 10
    assert torch.equal(criterion.detected_image, images[first])
    assert criterion.best_score == pytest.approx(misfits[first])


def test_discrepancy_takes_plain_floats_and_keeps_the_first_crossing() -> None:
    images = noisy_sequence(steps=30)
    misfits = [3.0, 2.0, 0.9, 0.5, 2.0, 0.1] + [5.0] * 24
    criterion = DiscrepancyPrinciple(tau=1.0, noise_std=0.5, check_every=100)
    criterion.set_noise_level(0.5, 4)  # bound 1.0
    assert run(criterion, images, misfit=misfits) is None  # check_every is never reached
    assert criterion.detected_step == 2
    assert torch.equal(criterion.detected_image, images[2])


def test_discrepancy_never_met_detects_nothing() -> None:
    images = noisy_sequence(steps=30)
    criterion = DiscrepancyPrinciple(tau=2.0)
    criterion.set_noise_level(0.01, 1)
    assert run(criterion, images, misfit=[1.0] * 30) is None
    assert criterion.detected_step is None and criterion.detected_image is None


def test_oracle_detects_the_best_psnr_and_never_stops_without_patience() -> None:
    images = noisy_sequence(steps=400)
    psnrs = [torch.tensor(30.0 - (t - 123) ** 2 / 100.0) for t in range(400)]
    criterion = Oracle()
    assert run(criterion, images, psnr=psnrs) is None
    assert criterion.detected_step == 123
    assert criterion.best_score == pytest.approx(30.0)
    assert torch.equal(criterion.detected_image, images[123])


def test_oracle_with_patience_stops() -> None:
    images = noisy_sequence(steps=400)
    psnrs = [30.0 - (t - 123) ** 2 / 100.0 for t in range(400)]
    criterion = Oracle(patience=50, check_every=10)
    stopped = run(criterion, images, psnr=psnrs)
    assert stopped is not None and 173 <= stopped < 183
    assert criterion.detected_step == 123


def test_fixed_never_stops_and_reports_the_last_step() -> None:
    images = noisy_sequence(steps=100)
    criterion = FixedSteps(check_every=1, history_every=50)
    assert run(criterion, images, misfit=[float(t) for t in range(100)]) is None
    assert criterion.detected_step == 99
    assert torch.equal(criterion.detected_image, images[99])
    assert criterion.score_history == [(0, 0.0), (50, 50.0)]
    assert criterion.last_score == 99.0


def test_detected_image_is_a_copy() -> None:
    images = noisy_sequence(steps=5)
    criterion = FixedSteps()
    run(criterion, images)
    copy = criterion.detected_image
    copy.zero_()
    assert torch.equal(criterion.detected_image, images[4])


# ------------------------------------------------------------------------------- resume


def make_discrepancy() -> DiscrepancyPrinciple:
    criterion = DiscrepancyPrinciple(tau=1.1)
    criterion.set_noise_level(0.005, 256)  # bound 1.1 * 0.08 = 0.088, met at step 519 below
    return criterion


FACTORIES: dict[str, Callable[[], StoppingCriterion]] = {
    "wmv": lambda: WindowedMovingVariance(window=20, patience=150, history_every=7),
    "emv": lambda: ExponentialMovingVariance(alpha=0.1, patience=150, history_every=7),
    "discrepancy": make_discrepancy,
    "oracle": lambda: Oracle(patience=300),
    "fixed": FixedSteps,
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    images = noisy_sequence(steps=600)
    misfits = [torch.tensor(1.0 / (1 + t / 50)) for t in range(600)]
    psnrs = [torch.tensor(20.0 + 10 * math.sin(t / 100)) for t in range(600)]
    original = FACTORIES[name]()
    for t in range(250):
        original.update(t, images[t], misfit=misfits[t], psnr=psnrs[t])

    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    resumed = FACTORIES[name]()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))

    for t in range(250, 600):
        a = original.update(t, images[t], misfit=misfits[t], psnr=psnrs[t])
        b = resumed.update(t, images[t], misfit=misfits[t], psnr=psnrs[t])
        assert a == b
    assert resumed.detected_step == original.detected_step
    assert resumed.detected_step is not None
    assert torch.equal(resumed.detected_image, original.detected_image)
    assert resumed.score_history == original.score_history
    assert resumed.last_score == original.last_score


def test_load_state_dict_rejects_another_criterion() -> None:
    state = FixedSteps().state_dict()
    with pytest.raises(ValueError, match="'fixed'"):
        Oracle().load_state_dict(state)


def test_load_state_dict_rejects_another_window() -> None:
    criterion = WindowedMovingVariance(window=5)
    run(criterion, noisy_sequence(steps=8))
    with pytest.raises(ValueError, match=r"stopping\.criterion\.window=6"):
        WindowedMovingVariance(window=6).load_state_dict(criterion.state_dict())


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("make", "setting"),
    [
        (lambda: WindowedMovingVariance(window=1), "stopping.criterion.window"),
        (lambda: WindowedMovingVariance(window=2.5), "stopping.criterion.window"),
        (lambda: WindowedMovingVariance(window=True), "stopping.criterion.window"),
        (lambda: WindowedMovingVariance(patience=0), "stopping.criterion.patience"),
        (lambda: ExponentialMovingVariance(alpha=0.0), "stopping.criterion.alpha"),
        (lambda: ExponentialMovingVariance(alpha=1.5), "stopping.criterion.alpha"),
        (lambda: ExponentialMovingVariance(alpha=-0.1), "stopping.criterion.alpha"),
        (lambda: ExponentialMovingVariance(alpha=float("nan")), "stopping.criterion.alpha"),
        (lambda: ExponentialMovingVariance(alpha="0.1"), "stopping.criterion.alpha"),
        (lambda: ExponentialMovingVariance(patience=0), "stopping.criterion.patience"),
        (lambda: ExponentialMovingVariance(warmup=-1), "stopping.criterion.warmup"),
        (lambda: DiscrepancyPrinciple(tau=0.9), "stopping.criterion.tau"),
        (lambda: DiscrepancyPrinciple(tau=float("nan")), "stopping.criterion.tau"),
        (lambda: DiscrepancyPrinciple(tau=float("inf")), "stopping.criterion.tau"),
        (lambda: DiscrepancyPrinciple(noise_std=0.0), "stopping.criterion.noise_std"),
        (lambda: DiscrepancyPrinciple(noise_std=-0.1), "stopping.criterion.noise_std"),
        (lambda: DiscrepancyPrinciple(noise_std=float("inf")), "stopping.criterion.noise_std"),
        (lambda: DiscrepancyPrinciple(noise_std=float("nan")), "stopping.criterion.noise_std"),
        (lambda: DiscrepancyPrinciple(noise_std="guess"), "stopping.criterion.noise_std"),
        (lambda: DiscrepancyPrinciple(noise_std=True), "stopping.criterion.noise_std"),
        (lambda: Oracle(patience=0), "stopping.criterion.patience"),
        (lambda: FixedSteps(check_every=0), "stopping.criterion.check_every"),
        (lambda: FixedSteps(history_every=0), "stopping.criterion.history_every"),
    ],
)
def test_bad_settings_name_the_setting(make: Callable[[], object], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.setting == setting
    assert setting in str(info.value)


def test_alpha_one_and_tau_one_are_allowed() -> None:
    assert ExponentialMovingVariance(alpha=1.0, warmup=None).warmup == 1
    assert ExponentialMovingVariance().warmup == 100
    assert DiscrepancyPrinciple(tau=1).tau == 1.0


def test_set_noise_level_rejects_bad_values() -> None:
    criterion = DiscrepancyPrinciple()
    with pytest.raises(ConfigError, match=r"stopping\.criterion\.noise_std"):
        criterion.set_noise_level(0.0, 10)
    with pytest.raises(ConfigError, match=r"stopping\.criterion\.noise_std"):
        criterion.set_noise_level(float("inf"), 10)
    with pytest.raises(ValueError, match="at least one element"):
        criterion.set_noise_level(0.1, 0)


def test_discrepancy_needs_a_misfit_and_a_noise_level() -> None:
    image = torch.zeros(1, 1, 4, 4)
    with pytest.raises(RuntimeError, match="set_noise_level"):
        DiscrepancyPrinciple().update(0, image, misfit=1.0)
    criterion = make_discrepancy()
    with pytest.raises(ValueError, match="misfit"):
        criterion.update(0, image)
    with pytest.raises(ValueError, match="single number"):
        criterion.update(0, image, misfit=torch.ones(3))


def test_oracle_update_without_psnr_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        Oracle().update(0, torch.zeros(1, 1, 4, 4))
    assert info.value.setting == "stopping"


def test_image_shape_must_not_change() -> None:
    criterion = WindowedMovingVariance(window=3)
    criterion.update(0, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        criterion.update(1, torch.zeros(1, 1, 5, 5))


# ------------------------------------------------------------------------------ noise level


def smooth_image(height: int = 128, width: int = 128) -> Tensor:
    y = torch.linspace(0, 1, height).view(-1, 1)
    x = torch.linspace(0, 1, width).view(1, -1)
    return (0.5 + 0.3 * torch.sin(3 * x) * torch.cos(2 * y) + 0.2 * torch.exp(-((x - 0.4) ** 2) * 8)).view(
        1, 1, height, width
    )


@pytest.mark.parametrize("sigma", [0.05, 0.1])
@pytest.mark.parametrize("shape", [(128, 128), (90, 127)])
def test_noise_estimate_is_within_15_percent(sigma: float, shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(3)
    image = smooth_image(*shape)
    noisy = image + sigma * torch.randn(image.shape, generator=gen)
    assert estimate_noise_std(noisy) == pytest.approx(sigma, rel=0.15)
    assert estimate_noise_std(image) < 0.01 * sigma  # a smooth image alone has almost no HH energy


def test_noise_estimate_of_complex_data() -> None:
    gen = torch.Generator().manual_seed(4)
    noise = torch.complex(torch.randn(64, 64, generator=gen), torch.randn(64, 64, generator=gen))
    assert estimate_noise_std(0.2 * noise + 1.0) == pytest.approx(0.2, rel=0.15)


def test_haar_detail_of_a_checkerboard() -> None:
    board = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(3, 3)
    assert torch.allclose(haar_diagonal_detail(board), torch.full((3, 3), 2.0))
    assert haar_diagonal_detail(torch.ones(5, 7)).shape == (2, 3)


@pytest.mark.parametrize("shape", [(64,), (1, 1, 1, 64), (3, 64, 1)])
def test_noise_estimate_rejects_non_grids(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="2x2"):
        estimate_noise_std(torch.zeros(shape))


def test_noise_estimate_rejects_non_finite_values() -> None:
    data = torch.zeros(8, 8)
    data[3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        estimate_noise_std(data)


# ------------------------------------------------------------------------------ callback


def fake_problem(
    ground_truth: Tensor | None = None, noise_std: float | None = None, observation: Tensor | None = None
) -> SimpleNamespace:
    if observation is None:
        gen = torch.Generator().manual_seed(5)
        observation = smooth_image(64, 64) + 0.1 * torch.randn(1, 1, 64, 64, generator=gen)
    # ``aligned``: an operator without ambiguities (InverseProblem.aligned with the identity alignment).
    return SimpleNamespace(
        observation=observation, ground_truth=ground_truth, noise_std=noise_std, aligned=lambda image: image
    )


def test_callback_rejects_oracle_without_ground_truth() -> None:
    callback = StoppingCallback(Oracle())
    module = SimpleNamespace(problem=fake_problem())
    with pytest.raises(ConfigError) as info:
        callback.on_fit_start(None, module)  # type: ignore[arg-type]
    assert info.value.setting == "stopping"
    assert "ground-truth" in str(info.value)
    StoppingCallback(Oracle()).prepare(fake_problem(ground_truth=torch.zeros(1, 1, 64, 64)))


def test_callback_needs_a_problem_and_a_criterion() -> None:
    with pytest.raises(RuntimeError, match="problem"):
        StoppingCallback(FixedSteps()).on_fit_start(None, SimpleNamespace(problem=None))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="StoppingCriterion"):
        StoppingCallback("wmv")  # type: ignore[arg-type]


def test_callback_noise_level_sources() -> None:
    config = StoppingCallback(DiscrepancyPrinciple(noise_std=0.3))
    config.prepare(fake_problem(noise_std=0.2))
    assert (config.criterion.noise_std_used, config.criterion.noise_std_source) == (0.3, NOISE_FROM_CONFIG)
    assert config.criterion.threshold == pytest.approx(1.1 * 0.3 * 64)

    known = StoppingCallback(DiscrepancyPrinciple())
    known.prepare(fake_problem(noise_std=0.2))
    assert (known.criterion.noise_std_used, known.criterion.noise_std_source) == (0.2, NOISE_FROM_PROBLEM)

    estimated = StoppingCallback(DiscrepancyPrinciple())
    estimated.prepare(fake_problem())
    assert estimated.criterion.noise_std_source == NOISE_ESTIMATED
    assert estimated.criterion.noise_std_used == pytest.approx(0.1, rel=0.15)
    assert estimated.criterion.delta == pytest.approx(estimated.criterion.noise_std_used * 64)


def test_callback_estimates_the_noise_level_when_asked_even_if_it_is_known() -> None:
    callback = StoppingCallback(DiscrepancyPrinciple(noise_std="estimate"))
    callback.prepare(fake_problem(noise_std=0.5))
    assert callback.criterion.noise_std_source == NOISE_ESTIMATED
    # the observation's level, not the 0.5 given
    assert callback.criterion.noise_std_used == pytest.approx(0.1, rel=0.15)


def test_callback_counts_complex_elements_twice() -> None:
    callback = StoppingCallback(DiscrepancyPrinciple(noise_std=1.0))
    callback.prepare(fake_problem(observation=torch.zeros(1, 1, 8, 8, dtype=torch.complex64)))
    assert callback.criterion.delta == pytest.approx(math.sqrt(128))


def test_callback_rejects_unusable_noise_levels() -> None:
    with pytest.raises(ConfigError, match="misfit target would be 0") as info:
        StoppingCallback(DiscrepancyPrinciple()).prepare(fake_problem(noise_std=0.0))
    assert info.value.setting == "stopping.criterion.noise_std"
    with pytest.raises(ConfigError, match="cannot be estimated") as info:
        StoppingCallback(DiscrepancyPrinciple()).prepare(fake_problem(observation=torch.ones(1, 1, 1, 50)))
    assert info.value.setting == "stopping.criterion.noise_std"
    with pytest.raises(ConfigError, match="misfit target would be 0"):
        StoppingCallback(DiscrepancyPrinciple()).prepare(fake_problem(observation=torch.ones(1, 1, 8, 8)))


def test_callback_stops_the_trainer_and_summarises() -> None:
    images = noisy_sequence(steps=400)
    callback = StoppingCallback(WindowedMovingVariance(window=10, patience=50, check_every=5))
    trainer = SimpleNamespace(global_step=0, should_stop=False)
    for t in range(400):
        outputs = {IMAGE: images[t], MISFIT: torch.tensor(1.0), PSNR: None}
        trainer.global_step = t + 1  # Lightning has stepped the optimizer by then
        callback.on_train_batch_end(trainer, None, outputs, None, 0)  # type: ignore[arg-type]
        if trainer.should_stop:
            break
    summary = callback.summary()
    detected = summary["detected_step"]
    assert trainer.should_stop and summary["stopped_early"]
    assert abs(detected - (NOISE_MINIMUM + 5)) <= 8
    assert detected + 50 <= summary["stop_step"] < detected + 55
    assert summary["criterion"] == "wmv"
    assert summary["best_score"] == pytest.approx(windowed_variance(images, detected, 10), rel=1e-9)
    assert summary["final_score"] == pytest.approx(windowed_variance(images, summary["stop_step"], 10))
    assert torch.equal(callback.criterion.detected_image, images[detected])

    restored = StoppingCallback(WindowedMovingVariance(window=10, patience=50, check_every=5))
    restored.load_state_dict(callback.state_dict())
    assert restored.summary() == summary


class PsnrAbove(StoppingCriterion):
    """A rule written here, as a new rule would be: one class that declares what it needs."""

    name = "psnr_above"
    needs = Needs(ground_truth=True, noise_level=True)
    _initial_best = -math.inf

    def __init__(self, margin: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.margin = margin
        self.level: float | None = None

    def prepare(self, problem) -> None:
        super().prepare(problem)
        self.level = -20.0 * math.log10(problem.noise_std) + self.margin  # PSNR of an error at the noise

    def _observe(self, step, image, misfit, psnr):
        score = device_scalar(psnr, image.device, self._score_dtype(), "psnr")
        self._keep_if(score > self._best_score, step, image, score)
        return score

    def _should_stop(self, step: int) -> bool:
        return self.best_score is not None and self.best_score >= self.level

    def stop_reason(self) -> str:
        return f"the PSNR passed {self.level:.1f} dB"

    def details(self) -> dict:
        return {"level": self.level}


def test_a_new_rule_is_one_class_the_callback_knows_only_by_its_declarations() -> None:
    callback = StoppingCallback(PsnrAbove(margin=1.0, check_every=1))
    with pytest.raises(ConfigError, match="ground-truth") as info:
        callback.prepare(fake_problem(noise_std=0.1))
    assert (info.value.setting, info.value.value) == ("stopping", "psnr_above")
    callback.prepare(fake_problem(ground_truth=torch.zeros(1, 1, 64, 64), noise_std=0.1))
    images = noisy_sequence(steps=40)
    trainer = SimpleNamespace(global_step=0, should_stop=False)
    for t in range(40):
        trainer.global_step = t + 1
        callback.on_train_batch_end(trainer, None, {IMAGE: images[t], PSNR: torch.tensor(float(t))}, None, 0)
        if trainer.should_stop:
            break
    summary = callback.summary()
    assert trainer.should_stop and summary["stop_step"] == summary["detected_step"] == 21
    assert summary["stop_reason"] == "the PSNR passed 21.0 dB" and summary["level"] == pytest.approx(21.0)
    assert callback.reports_detection and torch.equal(callback.reported_image()[0], images[21])
    assert "noise_std" not in summary  # only the discrepancy principle reports a noise level


def test_rules_declare_what_they_need_and_whether_their_detection_is_reported() -> None:
    assert Oracle.needs.ground_truth and not WindowedMovingVariance.needs.ground_truth
    assert DiscrepancyPrinciple.needs == Needs(misfit=True, noise_level=True)
    assert not FixedSteps.reports_detection
    assert all(rule.reports_detection for rule in (WindowedMovingVariance, ExponentialMovingVariance, Oracle))


def test_monitor_freezes_each_criterion_where_its_own_run_would_have_stopped(tmp_path) -> None:
    images = noisy_sequence(steps=500)
    truth = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))  # the clean image
    psnrs = [fast_psnr(image, truth) for image in images]
    peak_step = int(torch.stack(psnrs).argmax())
    monitor = StoppingMonitor(
        {
            "wmv": WindowedMovingVariance(window=10, patience=50, check_every=5),
            "oracle": Oracle(),
        },
        path=tmp_path / "monitor.json",
    )
    alone = StoppingCallback(WindowedMovingVariance(window=10, patience=50, check_every=5))
    trainer = SimpleNamespace(global_step=0, should_stop=False)
    module = SimpleNamespace(
        problem=fake_problem(ground_truth=truth),
        global_step=0,
        trajectory=SimpleNamespace(
            peak_summary=lambda: {"peak_psnr": float(psnrs[peak_step]), "peak_step": peak_step}
        ),
    )
    monitor.on_fit_start(trainer, module)  # type: ignore[arg-type]
    alone_stopped = False
    for t in range(500):
        outputs = {IMAGE: images[t], MISFIT: None, PSNR: psnrs[t]}
        trainer.global_step = module.global_step = t + 1
        monitor.on_train_batch_end(trainer, module, outputs, None, 0)  # type: ignore[arg-type]
        if not alone_stopped:
            alone_stopped = alone.observe(trainer, outputs)  # type: ignore[arg-type]
    monitor.on_fit_end(trainer, module)  # type: ignore[arg-type]

    assert not trainer.should_stop  # the monitor never ends the run
    saved = json.loads((tmp_path / "monitor.json").read_text())
    wmv, oracle = saved["criteria"]["wmv"], saved["criteria"]["oracle"]
    assert alone_stopped and wmv["stopped_early"]
    # Frozen at its stop: later (noisier, but also later low-variance) outputs were never seen.
    assert (wmv["detected_step"], wmv["stop_step"]) == (alone.criterion.detected_step, alone.stop_step)
    assert wmv["stop_step"] < 499
    assert abs(peak_step - NOISE_MINIMUM) <= 20
    assert oracle["detected_step"] == peak_step and oracle["detection_gap"] == pytest.approx(0.0, abs=1e-4)
    expected = float(fast_psnr(images[wmv["detected_step"]], truth))
    assert wmv["detected_psnr"] == pytest.approx(expected, abs=1e-4)
    assert wmv["detection_gap"] == pytest.approx(float(psnrs[peak_step]) - expected, abs=1e-4)
    assert saved["steps"] == 500 and saved["peak_step"] == peak_step


def test_monitor_needs_a_criterion() -> None:
    with pytest.raises(ValueError, match="at least one criterion"):
        StoppingMonitor({})


class RankZeroStrategy:
    """Stands in for a data-parallel strategy whose rank zero has decided ``decision``."""

    def __init__(self, decision: bool) -> None:
        self.decision = decision
        self.calls: list[tuple[bool, int]] = []

    def broadcast(self, value: bool, src: int = 0) -> bool:
        self.calls.append((value, src))
        return self.decision


@pytest.mark.parametrize("rank_zero_stops", [True, False])
def test_data_parallel_ranks_follow_rank_zero_at_check_steps_only(rank_zero_stops: bool) -> None:
    images = noisy_sequence(steps=40)
    strategy = RankZeroStrategy(rank_zero_stops)
    # This rank's own criterion would never stop; rank zero decides for it.
    callback = StoppingCallback(FixedSteps(check_every=5))
    trainer = SimpleNamespace(global_step=0, should_stop=False, world_size=2, strategy=strategy)
    for t in range(12):
        trainer.global_step = t + 1
        callback.on_train_batch_end(trainer, None, {IMAGE: images[t]}, None, 0)  # type: ignore[arg-type]
        if trainer.should_stop:
            break
    if rank_zero_stops:
        # The first check comes after 5 updates; no collective call happens before it.
        assert trainer.should_stop and trainer.global_step == 5
        assert strategy.calls == [(False, 0)]
    else:
        assert not trainer.should_stop
        assert strategy.calls == [(False, 0), (False, 0)]  # updates 5 and 10 of 12


def test_callback_needs_the_steps_output_image() -> None:
    callback = StoppingCallback(FixedSteps())
    trainer = SimpleNamespace(global_step=1, should_stop=False)
    for outputs in (None, {IMAGE: None, MISFIT: torch.tensor(1.0)}):
        with pytest.raises(RuntimeError, match="'image'"):
            callback.on_train_batch_end(trainer, None, outputs, None, 0)  # type: ignore[arg-type]


class SequenceModule(pl.LightningModule):
    """Publishes a prepared output sequence as if a network had produced it."""

    def __init__(self, images: Tensor) -> None:
        super().__init__()
        self.images = images
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.problem = fake_problem(ground_truth=images[0])

    def training_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        return {
            "loss": (self.weight - 1.0).pow(2).sum(),
            IMAGE: self.images[self.global_step],
            MISFIT: torch.tensor(1.0),
            PSNR: torch.tensor(-float(self.global_step)),
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(400, 1)), batch_size=1)


def test_callback_in_a_lightning_trainer() -> None:
    images = noisy_sequence(steps=400)
    callback = StoppingCallback(WindowedMovingVariance(window=10, patience=40, check_every=5))
    trainer = pl.Trainer(
        max_steps=400,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(SequenceModule(images))
    detected = callback.criterion.detected_step
    assert callback.stopped_early and trainer.global_step < 400
    assert abs(detected - (NOISE_MINIMUM + 5)) <= 8
    # The step numbers are those the module saw in training_step.
    assert torch.equal(callback.criterion.detected_image, images[detected])
    assert trainer.global_step == callback.stop_step + 1


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_updates_between_checks_stay_on_the_device(name: str, device: str) -> None:
    """On CUDA, any host sync outside the check steps raises; results match a CPU run."""
    images = noisy_sequence(steps=200)
    misfits = [torch.tensor(1.0 / (1 + t / 5)) for t in range(200)]  # bound met at step 52
    psnrs = [torch.tensor(20.0 + 10 * math.sin(t / 30)) for t in range(200)]
    reference = FACTORIES[name]()
    run(reference, images, misfit=misfits, psnr=psnrs)

    on_device = FACTORIES[name]()
    target = torch.device(device)
    moved = images.to(target)
    misfits_on = [m.to(target) for m in misfits]
    psnrs_on = [p.to(target) for p in psnrs]
    for t in range(200):
        may_sync = (t + 1) % on_device.check_every == 0
        if target.type == "cuda":
            torch.cuda.set_sync_debug_mode(0 if may_sync else "error")
        try:
            on_device.update(t, moved[t], misfit=misfits_on[t], psnr=psnrs_on[t])
        finally:
            if target.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    assert on_device.detected_step == reference.detected_step
    assert on_device.detected_image.device.type == target.type
    assert torch.equal(on_device.detected_image.cpu(), reference.detected_image)
