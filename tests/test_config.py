"""The config groups: the weight prior, the image regulariser, and what a task gives every method."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from dip_lightning import config
from dip_lightning.config import CONFIG_DIR, build, compose_config
from dip_lightning.errors import ConfigError
from dip_lightning.priors import TotalVariation
from tests.conftest import HYDRA_COMPOSE, config_options

TASKS = config_options("task")
METHODS = config_options("method")


def leaves(node: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested dict."""
    if not isinstance(node, dict):
        yield ".".join(prefix), node
        return
    for key, value in node.items():
        yield from leaves(value, (*prefix, str(key)))


@pytest.mark.parametrize(
    "overrides",
    [["preset=small", "task=ct", "method=mfvi"], ["hparams_search=tv_lambda", "regulariser.weight=1e-3"]],
)
def test_cached_composition_is_a_fresh_one(tmp_path, monkeypatch, overrides):
    """The tests compose each set of overrides once (tests/conftest.py); the copies they get are
    what Hydra composes afresh, and changing one leaves the next untouched."""
    cached = [compose_config(overrides, tmp_path) for _ in range(2)]
    cached[0].method.optimizer.lr = 123.0
    monkeypatch.setattr(config, "compose", HYDRA_COMPOSE)
    fresh = compose_config(overrides, tmp_path)
    assert OmegaConf.to_yaml(cached[1]) == OmegaConf.to_yaml(fresh)
    assert OmegaConf.to_container(cached[1], resolve=True) == OmegaConf.to_container(fresh, resolve=True)


@pytest.mark.parametrize("task", TASKS)
def test_method_settings_a_task_replaces_point_to_task_overrides(task):
    """A task's `method.*` entries are interpolations of `task_overrides.method.*`, so the composed
    config (`--cfg job`, `.hydra/config.yaml`) shows that the value comes from the task."""
    raw = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "task" / f"{task}.yaml"), resolve=False)
    for key, value in leaves(raw.get("method") or {}):
        assert value == f"${{task_overrides.method.{key}}}", f"conf/task/{task}.yaml sets method.{key}"
    listed = dict(leaves((raw.get("task_overrides") or {}).get("method") or {}))
    assert listed.keys() == dict(leaves(raw.get("method") or {})).keys()


@pytest.mark.parametrize("task", TASKS)
def test_every_method_gets_what_its_task_lists(small_config, task):
    """Of the groups merged after the task (task_method, preset, experiment), only
    conf/task_method/<task>_<method>.yaml depends on the pair: those pairs, and one method without."""
    paired = [m for m in METHODS if (CONFIG_DIR / "task_method" / f"{task}_{m}.yaml").is_file()]
    for method in [*paired, next(m for m in METHODS if m not in paired)]:
        cfg = small_config(f"task={task}", f"method={method}")
        listed = OmegaConf.to_container(cfg.task_overrides, resolve=True).get("method") or {}
        for key, value in leaves(listed):
            assert OmegaConf.select(cfg.method, key) == value, (task, method, key)


def test_the_prior_group_is_the_weight_prior_only(small_config):
    cfg = small_config("method=mfvi", "task=inpainting", "prior.sigma=0.2")
    assert (cfg.prior.mu, cfg.prior.sigma) == (0.0, 0.2)
    assert (cfg.method.prior_mu, cfg.method.prior_sigma) == (0.0, 0.2)
    assert config_options("prior") == ["gaussian"]
    assert config_options("regulariser") == ["none", "tv"]


@pytest.mark.parametrize("task", TASKS)
def test_regulariser_none_leaves_no_setting_behind(small_config, task):
    cfg = small_config(f"task={task}", "regulariser=none")
    assert OmegaConf.to_container(cfg.regulariser) == {}


def test_tv_weight_is_the_tasks_unless_given(small_config):
    image = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = {
        "denoising": 1e-4,
        "inpainting": 1e-4,
        "super_resolution": 1e-4,
        "ct": 3e-3,
        "phase_retrieval": 1e-4,
        "deblurring": 1e-4,
        "blind_deblurring": 1e-4,
        "mri": 1e-6,
    }
    assert set(expected) == set(TASKS), "a new task: say here which TV weight it uses"
    for task, weight in expected.items():
        tv = build(small_config(f"task={task}", "regulariser=tv").regulariser)
        assert isinstance(tv, TotalVariation) and tv.weight == weight
        assert float(tv(image)) > 0
    given = small_config("task=ct", "regulariser.weight=3e-4", "regulariser.kind=isotropic").regulariser
    assert (build(given).weight, build(given).kind) == (3e-4, "isotropic")


@pytest.mark.parametrize(
    ("override", "setting"),
    [("regulariser.weight=-1e-4", "regulariser.weight"), ("regulariser.kind=l1", "regulariser.kind")],
)
def test_bad_regulariser_settings_name_the_setting(small_config, override, setting):
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        build(small_config("regulariser=tv", override).regulariser)
