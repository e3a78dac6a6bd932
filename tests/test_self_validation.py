"""Self-validation early stopping: the autoencoder's sizing, the rule, its state and its settings."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor

from dip_lightning.config import compose_config
from dip_lightning.errors import ConfigError
from dip_lightning.job.run import run
from dip_lightning.stopping.self_validation import (
    SelfValidation,
    ValidationAutoencoder,
    autoencoder_stages,
    stage_channels,
)

SIDE = 16


def smooth(steps: int, seed: int = 0) -> Tensor:
    """(steps, 1, 1, SIDE, SIDE) outputs: one smooth image with a little jitter."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.linspace(0, 1, SIDE)
    image = 0.25 + 0.5 * torch.outer(grid, grid)
    return (image + 0.01 * torch.randn(steps, 1, 1, SIDE, SIDE, generator=gen)).clamp(0, 1)


# --------------------------------------------------------------------------- the autoencoder


@pytest.mark.parametrize(
    ("shape", "stages", "code"),
    [((512, 512), 7, (4, 4)), ((64, 64), 4, (4, 4)), ((32, 32), 3, (4, 4)), ((8, 8), 1, (4, 4)),
     ((100, 60), 4, (7, 4)), ((37, 50), 4, (3, 4))],
)  # fmt: skip
def test_stages_halve_the_shorter_side_to_a_four_pixel_code(shape, stages, code) -> None:
    assert autoencoder_stages(*shape) == stages
    ae = ValidationAutoencoder(1, *shape)
    assert ae.stages == stages and ae.code_shape == code
    if max(shape) <= 100:
        assert ae(torch.rand(2, 1, *shape)).shape == (2, 1, *shape)


def test_the_512_px_autoencoder_is_the_references() -> None:
    assert stage_channels(3, 7) == [3, 32, 64, 128, 128, 128, 128, 1]
    ae = ValidationAutoencoder(3, 512, 512)
    assert [block[0].out_channels for block in ae.encoder] == [32, 64, 128, 128, 128, 128, 1]
    assert [block[0].out_channels for block in ae.decoder] == [128, 128, 128, 128, 64, 32, 3]
    assert [(layer.in_features, layer.bias) for layer in ae.linear] == [(16, None)] * 4
    assert isinstance(ae.decoder[-1][-1], torch.nn.Sigmoid) and isinstance(
        ae.decoder[-1][1], torch.nn.BatchNorm2d
    )


# ---------------------------------------------------------------------------------- the rule


def scripted(criterion: SelfValidation, scores: list[float]) -> list[int]:
    """Replace the autoencoder's error by ``scores`` (one per scored step); return the training steps."""
    remaining = iter(scores)
    trained: list[int] = []
    criterion._reconstruction_error = lambda ae, newest: torch.tensor(next(remaining), dtype=torch.float64)
    criterion._train_epoch = lambda ae, queue: trained.append(criterion._count - 1)
    return trained


def test_scores_start_when_the_queue_is_full_and_the_rule_stops_after_patience() -> None:
    criterion = SelfValidation(window=4, patience=5, update_every=2, check_every=1)
    scores = [5.0, 4.0, 3.0, 3.5, 2.0, 2.5, 2.2, 2.1, 2.0, 2.6, 9.0, 9.0]
    trained = scripted(criterion, scores)
    images = smooth(20)
    stopped_at = None
    for step in range(20):
        if criterion.update(step, images[step]):
            stopped_at = step
            break
        if step < 3:
            assert criterion.last_score is None
    # Step 3 is the first with a full queue; the smallest score (2.0, step 7) is kept, an equal
    # later score (step 11) is not an improvement, and the rule stops 5 steps after step 7.
    assert criterion.detected_step == 7 and criterion.best_score == 2.0
    assert stopped_at == 12
    assert torch.equal(criterion.detected_image, images[7])
    assert trained == [3, 5, 7, 9, 11]  # every update_every-th scored step, from the first


def test_the_autoencoder_learns_the_queue_and_flags_a_novel_output() -> None:
    criterion = SelfValidation(window=8, patience=100, batch_size=4, lr=1e-2)
    images = smooth(40)
    for step in range(40):
        criterion.update(step, images[step])
    ae = criterion._autoencoder
    assert ae is not None and criterion.details() == {"autoencoder_stages": 2, "autoencoder_trainings": 33}
    seen = criterion._reconstruction_error(ae, images[-1, 0, 0].unsqueeze(0))
    noise = torch.rand(1, SIDE, SIDE, generator=torch.Generator().manual_seed(3))
    assert criterion._reconstruction_error(ae, noise) > 2 * seen
    assert criterion.last_score is not None and criterion.last_score < criterion.score_history[0][1]


def test_it_draws_nothing_from_the_runs_random_streams() -> None:
    torch.manual_seed(11)
    before = torch.get_rng_state()
    criterion = SelfValidation(window=4, patience=10)
    for step, image in enumerate(smooth(10)):
        criterion.update(step, image)
    assert torch.equal(torch.get_rng_state(), before)


def test_outputs_are_clipped_into_the_queue_and_the_reported_image_is_not() -> None:
    criterion = SelfValidation(window=2, patience=10)
    image = torch.full((1, 1, SIDE, SIDE), 1.5)
    criterion.update(0, image)
    criterion.update(1, image)
    assert criterion._queue is not None and float(criterion._queue.max()) == 1.0
    assert torch.equal(criterion.detected_image, image)


def test_state_dict_round_trip_continues_identically() -> None:
    images = smooth(30, seed=4)
    original = SelfValidation(window=6, patience=50, batch_size=4, update_every=2, history_every=1)
    for step in range(15):
        original.update(step, images[step])
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    resumed = SelfValidation(window=6, patience=50, batch_size=4, update_every=2, history_every=1)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for step in range(15, 30):
        assert original.update(step, images[step]) == resumed.update(step, images[step])
    assert resumed.score_history == original.score_history and len(original.score_history) == 25
    assert resumed.detected_step == original.detected_step
    assert resumed.details() == original.details()


def test_load_state_dict_rejects_another_window() -> None:
    criterion = SelfValidation(window=3)
    for step, image in enumerate(smooth(4)):
        criterion.update(step, image)
    with pytest.raises(ValueError, match=r"stopping\.criterion\.window=4"):
        SelfValidation(window=4).load_state_dict(criterion.state_dict())


# ----------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("make", "setting"),
    [
        (lambda: SelfValidation(window=1), "stopping.criterion.window"),
        (lambda: SelfValidation(window=2.5), "stopping.criterion.window"),
        (lambda: SelfValidation(patience=0), "stopping.criterion.patience"),
        (lambda: SelfValidation(update_every=0), "stopping.criterion.update_every"),
        (lambda: SelfValidation(update_every=True), "stopping.criterion.update_every"),
        (lambda: SelfValidation(lr=0.0), "stopping.criterion.lr"),
        (lambda: SelfValidation(lr=-1e-3), "stopping.criterion.lr"),
        (lambda: SelfValidation(lr=float("nan")), "stopping.criterion.lr"),
        (lambda: SelfValidation(lr=float("inf")), "stopping.criterion.lr"),
        (lambda: SelfValidation(lr="fast"), "stopping.criterion.lr"),
        (lambda: SelfValidation(batch_size=0), "stopping.criterion.batch_size"),
        (lambda: SelfValidation(seed=-1), "stopping.criterion.seed"),
        (lambda: SelfValidation(check_every=0), "stopping.criterion.check_every"),
    ],
)
def test_bad_settings_name_the_setting(make: Callable[[], object], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.setting == setting


def test_images_too_small_for_the_autoencoder_are_refused_before_training() -> None:
    problem = SimpleNamespace(ground_truth=None, image_shape=(6, 32))
    with pytest.raises(ConfigError, match="at least 8 px") as info:
        SelfValidation().prepare(problem)
    assert info.value.setting == "stopping"
    SelfValidation().prepare(SimpleNamespace(ground_truth=None, image_shape=(8, 32)))


# ------------------------------------------------------------------------------- real runs

TINY = (
    "stopping=self_validation",
    "stopping.criterion.window=8",
    "stopping.criterion.patience=15",
    "stopping.criterion.check_every=1",
    "data.size=32",
    "num_threads=1",
)


def test_a_run_stops_and_reports_the_detected_output(small_config, tmp_path) -> None:
    cfg = small_config("method=dip", *TINY, "trainer.max_steps=120", "trainer.check_val_every_n_epoch=120")
    run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (
        metrics["criterion"] == "self_validation"
        and metrics["reconstruction_source"] == "stopping:self_validation"
    )
    assert metrics["stopped_early"] and metrics["stop_step"] - metrics["detected_step"] == 15
    assert metrics["detected_step"] >= 7 and metrics["autoencoder_stages"] == 3
    assert metrics["autoencoder_trainings"] == metrics["stop_step"] - 7 + 1
    assert metrics["psnr"] == pytest.approx(metrics["detected_psnr"], abs=1e-3)


def test_a_bad_setting_fails_before_training(small_config) -> None:
    with pytest.raises(ConfigError) as info:
        run(small_config("method=dip", *TINY, "stopping.criterion.update_every=0"))
    assert info.value.setting == "stopping.criterion.update_every"


@pytest.mark.long
def test_a_run_stopped_by_a_signal_resumes_to_the_uninterrupted_result(tmp_path, signal_handlers) -> None:
    base = ("preset=small", "logger=none", "method=dip", *TINY, "stopping.criterion.patience=100")
    base = (*base, "trainer.max_steps=24", "trainer.check_val_every_n_epoch=6")
    full = tmp_path / "full"
    run(compose_config(list(base), full))
    stopped = tmp_path / "stopped"
    signal_at = "+callbacks.signal={_target_:tests.interrupting.SignalAt,step:13}"
    with pytest.raises(KeyboardInterrupt):
        run(compose_config([*base, signal_at], stopped))
    assert json.loads((stopped / "metrics.json").read_text())["status"] == "interrupted"
    resumed = tmp_path / "resumed"
    run(compose_config([*base, f"ckpt_path={stopped}"], resumed))
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (full, resumed))
    assert b["status"] == "completed" and b["steps"] == 24
    for key in (
        "detected_step",
        "best_score",
        "final_score",
        "detected_psnr",
        "psnr",
        "autoencoder_trainings",
    ):
        assert b[key] == pytest.approx(a[key], rel=1e-5), key
    assert math.isfinite(a["final_score"])
    np.testing.assert_allclose(np.load(full / "reconstruction.npy"), np.load(resumed / "reconstruction.npy"))


def test_the_checkpoint_holds_the_queue_and_the_autoencoder(small_config, tmp_path) -> None:
    run(small_config("method=dip", *TINY, "trainer.max_steps=12"))
    checkpoint = torch.load(Path(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = [s for s in checkpoint["callbacks"].values() if "criterion" in s]
    criterion = state["criterion"]
    assert criterion["name"] == "self_validation" and criterion["_queue"].shape == (8, 1, 32, 32)
    assert criterion["trainings"] == 12 - 8 + 1 and "encoder.0.0.weight" in criterion["autoencoder"]
