"""The job's ``after_fit`` hook: once after training, before evaluation, and stoppable at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dip_lightning.job.run import run


def metrics_of(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def test_after_fit_runs_once_before_the_results_are_evaluated(small_config):
    cfg = small_config("method._target_=tests.after_fit_methods.RecordsAfterFit", "trainer.max_steps=3")
    run(cfg)
    metrics = metrics_of(cfg)
    assert metrics["status"] == "completed"
    # Only after exactly one call does the method report the ground truth itself.
    assert metrics["psnr"] == pytest.approx(40.0, abs=0.01), metrics


def test_a_signal_during_after_fit_reports_the_fitted_network(small_config, signal_handlers):
    cfg = small_config("method._target_=tests.after_fit_methods.InterruptedAfterFit", "trainer.max_steps=3")
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    metrics = metrics_of(cfg)
    assert metrics["status"] == "interrupted"
    assert "after training" in metrics["reason"]
    assert metrics["psnr"] < 30.0, metrics
    assert (Path(cfg.paths.output_dir) / "reconstruction.npy").is_file()
