"""Complex-valued measurements end to end: undersampled k-space (a masked 2D FFT) through DIP with
ES-WMV and through MFVI, with the losses, metrics, noise and saved images of a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dip_lightning.job.run import build_problem, run

FOURIER = ("operator=fourier", "data.size=32", "trainer.check_val_every_n_epoch=1000")


def read_metrics(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def test_the_fourier_problem_has_complex_noise_on_its_measurement(small_config):
    problem = build_problem(small_config(*FOURIER))
    observation = problem.observation
    assert observation.is_complex()
    clean = problem.operator(problem.ground_truth)
    noise = (observation - clean)[clean != 0]
    # Real and imaginary parts each carry the configured std (0.1 by default) on sampled rows.
    assert noise.real.std().item() == pytest.approx(0.1, rel=0.2)
    assert noise.imag.std().item() == pytest.approx(0.1, rel=0.2)


@pytest.mark.long
def test_dip_with_es_wmv_runs_on_kspace(small_config, tmp_path):
    cfg = small_config(
        *FOURIER,
        "method=dip",
        "stopping=wmv",
        "stopping.criterion.window=5",
        "stopping.criterion.patience=10",
        "trainer.max_steps=60",
    )
    objective = run(cfg)
    metrics = read_metrics(cfg)
    assert metrics["status"] == "completed"
    assert metrics["criterion"] == "wmv" and metrics["detected_step"] is not None
    assert math.isfinite(metrics["psnr"]) and objective == pytest.approx(metrics["psnr"])
    # The fit reaches beyond the zero-filled inverse FFT (the baseline) on the way.
    assert metrics["peak_psnr"] > metrics["baseline_psnr"]
    # The measurement is kept complex in the .npy and shown as a real image.
    assert np.iscomplexobj(np.load(tmp_path / "observation.npy"))
    assert (tmp_path / "observation.png").is_file() and (tmp_path / "baseline.png").is_file()
    assert np.isrealobj(np.load(tmp_path / "reconstruction.npy"))


@pytest.mark.long
def test_mfvi_runs_on_kspace_with_finite_uncertainty_metrics(small_config, tmp_path):
    cfg = small_config(*FOURIER, "method=mfvi", "method.num_samples=4", "trainer.max_steps=20")
    run(cfg)
    metrics = read_metrics(cfg)
    assert metrics["status"] == "completed"
    for name in ("psnr", "uce", "nll"):
        assert math.isfinite(metrics[name]), (name, metrics[name])
    assert np.load(tmp_path / "variance_epistemic.npy").min() >= 0
