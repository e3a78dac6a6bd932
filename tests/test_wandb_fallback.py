"""W&B trouble never ends a run: no key, no network or a W&B run that cannot start."""

from __future__ import annotations

import json
import socket
import time

import pytest

from dip_lightning.config import compose_config
from dip_lightning.job.run import run
from dip_lightning.tracking import wandb_setup
from tests.wandb_records import record_types


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def online_env(monkeypatch, tmp_path):
    """Online mode asked for, with no credentials anywhere and no proxy."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", *wandb_setup.PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return monkeypatch


def test_online_without_a_key_logs_offline(online_env):
    with pytest.warns(UserWarning, match="no W&B API key"):
        kwargs = wandb_setup.prepare_wandb_kwargs({"offline": False, "project": "p"})
    assert kwargs["offline"] is True and kwargs["project"] == "p"


def test_a_netrc_login_counts_as_a_key(online_env, tmp_path):
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    online_env.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_setup.has_wandb_key()


def test_online_without_network_logs_offline_quickly(online_env):
    online_env.setenv("WANDB_API_KEY", "k" * 40)
    online_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="cannot be reached"):
        kwargs = wandb_setup.prepare_wandb_kwargs({"offline": False})
    assert kwargs["offline"] is True
    assert time.perf_counter() - start < wandb_setup.PROBE_TIMEOUT_S + 1


def test_online_run_without_a_key_completes_with_finished_offline_files(online_env, tmp_path):
    cfg = compose_config(["preset=small", "logger=wandb_online", "trainer.max_steps=3"], tmp_path)
    with pytest.warns(UserWarning, match="logging offline instead"):
        run(cfg)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"
    (wandb_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    # W&B's writer is a separate service process: after a busy test session it can flush the
    # file a moment after wandb.finish() returned, so give it a few seconds.
    deadline = time.monotonic() + 15
    while not record_types(wandb_file) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert record_types(wandb_file)[-1] == "exit"


def test_a_wandb_run_that_cannot_start_does_not_stop_the_run(online_env, tmp_path):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("W&B is broken here")

    online_env.setattr(wandb, "init", broken_init)
    cfg = compose_config(["preset=small", "logger=wandb", "trainer.max_steps=3"], tmp_path)
    with pytest.warns(UserWarning, match="going on without W&B logging"):
        run(cfg)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"
