"""The dashboard a person opens: optuna-dashboard on a sweep directory, loaded in headless Chromium.

The study is written in-process (a journal in a sweep directory, as our sweeper leaves it); the
dashboard runs as ``python -m dip_lightning.dashboard <dir>`` on 127.0.0.1, Debian's Chromium
renders its pages, and the screenshots land in the test's temporary directory.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest

from dip_lightning.dashboard import main, resolve_storage
from dip_lightning.sweeps.storage import open_storage
from tests.conftest import ROOT
from tests.servers import free_port, wait_for

N_TRIALS = 7


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed: apt-get install chromium")


def make_sweep(root: Path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="mfvi_prior-denoising-camera-small",
        storage=open_storage(str(root / "optuna.journal")),
        direction="maximize",
    )
    study.optimize(
        lambda t: (
            30.0
            - 100 * (t.suggest_float("prior.sigma", 0.01, 0.5, log=True) - 0.1) ** 2
            + t.suggest_float("method.optimizer.lr", 1e-4, 1e-2, log=True)
        ),
        n_trials=N_TRIALS,
    )
    return study


def render(url: str, out: Path, profile: Path) -> str:
    """The page's text after its scripts ran (``--dump-dom``) and a screenshot of it."""
    common = [
        chromium(),
        "--headless",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        "--hide-scrollbars",
        # Virtual time runs until the page is idle (its API calls answered) or 20 s have "passed".
        "--virtual-time-budget=20000",
    ]
    subprocess.run([*common, f"--screenshot={out}", url], check=True, capture_output=True, timeout=120)
    dom = subprocess.run(
        [*common, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120
    )
    text = re.sub(r"<(style|script)\b.*?</\1>", " ", dom.stdout, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def test_resolve_storage_names_what_is_wrong(tmp_path):
    assert main([str(tmp_path)]) == 2
    assert main(["redis://host/0"]) == 2
    make_sweep(tmp_path)
    assert resolve_storage(str(tmp_path)) == str(tmp_path / "optuna.journal")
    url = "postgresql://dip@127.0.0.1:5432/studies"
    assert resolve_storage(url) == url


@pytest.mark.heavy
def test_dashboard_renders_the_sweep_in_headless_chromium(tmp_path):
    chromium()  # skips before any work when Chromium is missing
    sweep = tmp_path / "sweep"
    study = make_sweep(sweep)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "dip_lightning.dashboard", str(sweep), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        api = f"http://127.0.0.1:{port}/api/studies"

        def up() -> bool:
            try:
                with urllib.request.urlopen(api, timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        assert wait_for(up, timeout=60), f"dashboard did not start: {server.poll()}"
        base = f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}"
        profile = tmp_path / "chromium-profile"
        overview = render(base, tmp_path / "dashboard_study.png", profile)
        trials = render(f"{base}/trials", tmp_path / "dashboard_trials.png", profile)
        analytics = render(f"{base}/analytics", tmp_path / "dashboard_analytics.png", profile)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert study.study_name in overview and "History" in overview and "Hyperparameter Importance" in overview
    shown = re.search(r"(\d+) Trials", trials)
    assert shown is not None, trials[:2000]
    assert int(shown.group(1)) == len(study.trials) == N_TRIALS
    assert all(f"Trial {n} " in trials for n in range(N_TRIALS))
    assert "Slice" in analytics and "prior.sigma" in analytics
    for name in ("dashboard_study.png", "dashboard_trials.png", "dashboard_analytics.png"):
        image = tmp_path / name
        assert image.stat().st_size > 10_000 and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
