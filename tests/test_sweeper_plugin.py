"""Our Optuna sweeper's parts without launching jobs: the search-space grammar, storages, counting.

These run in-process in well under a second each; the end-to-end sweeps are in test_sweeps.py.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from dip_lightning.errors import ConfigError
from dip_lightning.sweeps.optuna_sweeper import ResumableOptunaSweeper
from dip_lightning.sweeps.search_space import parse_search_space
from dip_lightning.sweeps.storage import (
    check_old_database,
    journal_path,
    open_storage,
    redact,
    requeue_running,
    storages_in,
)
from dip_lightning.sweeps.study_trials import counted_trials
from tests.conftest import run_cli

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_hydra_optuna_sweeper_grammar_maps_to_optuna_distributions():
    space = parse_search_space(
        {
            "prior.sigma": "tag(log, interval(0.01, 0.5))",
            "method.optimizer.lr": "interval(1e-4, 1e-2)",
            "model": "choice(skip, skip_light)",
            "trainer.max_steps": "range(100, 400, 100)",
            "method.mc_samples": "tag(int, interval(5, 25))",
        },
        ["prior.image_prior={_target_:x.Y,steps:3}", "method.lr=0.1", "model=skip_tiny,skip"],
    )
    d = space.distributions
    assert d["prior.sigma"] == FloatDistribution(0.01, 0.5, log=True)
    assert d["method.optimizer.lr"] == FloatDistribution(1e-4, 1e-2)
    assert d["trainer.max_steps"] == IntDistribution(100, 300, step=100)  # Hydra's range: stop excluded
    assert d["method.mc_samples"] == IntDistribution(5, 25)
    # The command line wins over the config for the same key.
    assert d["model"] == CategoricalDistribution(["skip_tiny", "skip"])
    assert space.fixed == {"prior.image_prior": "{_target_:x.Y,steps:3}", "method.lr": "0.1"}
    assert parse_search_space({"n": "range(100, 400, 100)"}, []).grid() == {"n": [100, 200, 300]}
    overrides = space.overrides(
        {
            "prior.sigma": 0.05,
            "method.optimizer.lr": 1e-3,
            "model": "skip",
            "trainer.max_steps": 200,
            "method.mc_samples": 7,
        }
    )
    assert overrides[0] == "prior.sigma=0.05" and overrides[-1] == "model=skip"
    assert "prior.image_prior={_target_:x.Y,steps:3}" in overrides


def test_choices_of_lists_and_dicts_are_written_back_as_overrides():
    space = parse_search_space({}, ["model.channels_down=choice([8,8],[16,16])", "flag=choice(true,false)"])
    assert space.distributions["model.channels_down"].choices == ("[8,8]", "[16,16]")
    assert space.overrides({"model.channels_down": "[16,16]", "flag": False}) == [
        "model.channels_down=[16,16]",
        "flag=false",
    ]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"a": "tag(log, interval(0, 1))"}, "hydra.sweeper.params.a.*0 < start < end"),
        ({"a": "interval(2, 1)"}, "hydra.sweeper.params.a.*start < end"),
        ({"a": "tag(sqrt, interval(1, 2))"}, "tags must be among \\['int', 'log'\\]"),
        ({"a": "tag(log, range(1, 5))"}, "use tag\\(log, interval"),
        ({"a": "interval(1,"}, "not a valid override"),
    ],
)
def test_bad_search_spaces_name_the_setting(params, match):
    with pytest.raises(ConfigError, match=match):
        parse_search_space(params, [])


def test_grid_needs_enumerable_parameters():
    with pytest.raises(ConfigError, match="grid sampler: use choice"):
        parse_search_space({"a": "interval(0.1, 0.2)"}, []).grid()


def sweeper(**settings):
    base = {
        "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": None},
        "direction": "maximize",
        "storage": None,
        "study_name": "s",
        "n_trials": 3,
    }
    return ResumableOptunaSweeper(**{**base, **settings})


def test_bad_sweeper_settings_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="hydra.sweeper.n_trials"):
        sweeper(n_trials=0)
    with pytest.raises(ConfigError, match="hydra.sweeper.custom_search_space.*hydra.sweeper.params"):
        sweeper(custom_search_space="my.module.space")
    with pytest.raises(ConfigError, match="hydra.sweeper.storage.*journal file"):
        open_storage("redis://localhost")
    with pytest.raises(ConfigError, match="heartbeat_interval.*database storage"):
        open_storage(str(tmp_path / "s.journal"), heartbeat_interval=5)
    with pytest.raises(ConfigError, match="grace_period.*exceed"):
        open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=5, grace_period=5)
    with pytest.raises(ConfigError, match="hydra.sweeper.sampler"):
        sweeper(sampler="tpe").make_sampler(0, parse_search_space({}, []))


def test_sampler_seed_follows_the_study_and_grid_gets_the_space():
    space = parse_search_space({"a": "choice(1,2)", "b": "range(0,3)"}, [])
    s = sweeper(seed=10, sampler={"_target_": "optuna.samplers.RandomSampler", "seed": None})
    draws = [
        s.make_sampler(offset, space).sample_independent(None, None, "x", FloatDistribution(0, 1))
        for offset in (0, 0, 1)
    ]
    assert draws[0] == draws[1] != draws[2]
    grid = sweeper(sampler={"_target_": "optuna.samplers.GridSampler", "search_space": None, "seed": None})
    assert isinstance(grid.make_sampler(0, space), optuna.samplers.GridSampler)


def test_journal_storage_requeues_interrupted_trials(tmp_path):
    setting = str(tmp_path / "sweep" / "optuna.journal")
    assert journal_path(setting) == tmp_path / "sweep" / "optuna.journal"
    assert journal_path(f"journal:{setting}") == tmp_path / "sweep" / "optuna.journal"
    study = optuna.create_study(study_name="s", storage=open_storage(setting))
    done = study.ask({"x": FloatDistribution(0, 1)})
    study.tell(done, 1.0)
    running = study.ask({"x": FloatDistribution(0, 1)})
    # A new process (a restarted sweep) sees the RUNNING trial and puts it back in the queue.
    assert requeue_running(open_storage(setting), "s") == [running.number]
    again = optuna.load_study(study_name="s", storage=open_storage(setting))
    assert [t.state for t in again.get_trials()] == [TrialState.COMPLETE, TrialState.WAITING]
    assert again.ask({"x": FloatDistribution(0, 1)}).params["x"] == running.params["x"]
    assert storages_in(tmp_path / "sweep") == [setting]


def test_stale_and_surplus_trials_do_not_count():
    study = optuna.create_study()
    for _ in range(4):
        study.ask()
    trials = study.get_trials()
    study.tell(0, state=TrialState.FAIL)
    study.enqueue_trial({}, user_attrs={})
    retry = study.get_trials()[-1]
    study._storage.set_trial_system_attr(retry._trial_id, "retry_history", [0])
    study._storage.set_trial_user_attr(trials[3]._trial_id, "surplus", True)
    assert [t.number for t in counted_trials(study.get_trials())] == [1, 2, 4]


def test_old_sqlite_study_is_not_silently_replaced(tmp_path):
    (tmp_path / "optuna.db").write_bytes(b"")
    with pytest.raises(ConfigError, match="optuna storage upgrade --storage sqlite:///.*optuna.db"):
        check_old_database(str(tmp_path / "optuna.journal"), tmp_path)
    check_old_database(f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path)  # asked for explicitly: fine


def test_study_of_an_older_optuna_asks_for_an_upgrade(tmp_path):
    database = tmp_path / "old.db"
    url = f"sqlite:///{database}"
    optuna.create_study(study_name="s", storage=url)
    with sqlite3.connect(database) as connection:  # what optuna 2.10 left behind
        connection.execute("UPDATE alembic_version SET version_num = 'v2.6.0.a'")
    with pytest.raises(ConfigError, match=r"optuna storage upgrade --storage sqlite:///"):
        open_storage(url)


def test_passwords_stay_out_of_logs():
    assert (
        redact("postgresql://dip:secret@db.example:5432/studies")
        == "postgresql://dip:***@db.example:5432/studies"
    )
    assert redact("postgresql://dip@127.0.0.1/studies") == "postgresql://dip@127.0.0.1/studies"


@pytest.mark.heavy
def test_paper_protocol_runs_the_four_initial_points_then_the_gp(tmp_path):
    args = [
        "-m",
        "hparams_search=mfvi_prior_paper",
        "preset=small",
        "logger=none",
        "num_threads=1",
        "trainer.check_val_every_n_epoch=1000",
        "trainer.max_steps=3",
        "hydra.sweeper.n_trials=5",
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = tmp_path / "outputs/sweeps/mfvi_prior_paper-denoising-camera-small"
    study = optuna.load_study(
        study_name=sweep_dir.name, storage=open_storage(str(sweep_dir / "optuna.journal"))
    )
    trials = study.get_trials()
    sigmas = [t.params["prior.sigma"] for t in trials]
    assert sigmas[:4] == [0.075, 0.175, 0.275, 0.375] and 0.01 <= sigmas[4] <= 0.4
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    for trial in trials:
        config = (sweep_dir / str(trial.number) / ".hydra" / "overrides.yaml").read_text()
        assert f"prior.sigma={trial.params['prior.sigma']}" in config
    results = json.loads(
        json.dumps(__import__("yaml").safe_load((sweep_dir / "optimization_results.yaml").read_text()))
    )
    assert results["optuna_version"].startswith("5.") and results["n_trials"] == 5


def test_switching_sampler_drops_the_settings_it_does_not_take():
    s = sweeper(sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 1, "n_startup_trials": 4})
    assert isinstance(s.make_sampler(0, parse_search_space({}, [])), optuna.samplers.RandomSampler)


@pytest.mark.heavy
def test_a_study_written_by_optuna_2_10_is_upgraded_and_continued(tmp_path):
    """tests/data/optuna_2_10_study.db was written by optuna 2.10.1 (SQLAlchemy 1.4), as the old
    sweeper left studies: study 'old', two COMPLETE trials and one left RUNNING by a kill.

    Made with: create_study('old', 'sqlite:///optuna.db', direction='maximize'), two asked and
    told trials suggesting prior.sigma on log [0.01, 0.5], and a third asked but never told.
    """
    database = tmp_path / "optuna.db"
    shutil.copy(Path(__file__).parent / "data" / "optuna_2_10_study.db", database)
    url = f"sqlite:///{database}"
    with pytest.raises(ConfigError, match="optuna storage upgrade --storage sqlite:///"):
        open_storage(url)
    upgrade = subprocess.run(
        [str(Path(sys.executable).parent / "optuna"), "storage", "upgrade", "--storage", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr[-2000:]
    assert requeue_running(open_storage(url), "old") == [2]
    study = optuna.load_study(study_name="old", storage=open_storage(url))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.WAITING]
    assert [t.value for t in study.trials[:2]] == [20.05, 20.1]


def test_enqueued_points_must_name_parameters_of_the_search_space():
    space = parse_search_space({"prior.sigma": "interval(0.01, 0.4)"}, [])
    with pytest.raises(ConfigError, match=r"hydra.sweeper.enqueue.*\['prior.sigma'\]"):
        sweeper(enqueue=[{"prior.sigmaa": 0.1}]).enqueue_points(optuna.create_study(), space)
    study = optuna.create_study()
    sweeper(enqueue=[{"prior.sigma": 0.075}, {"prior.sigma": 0.175}]).enqueue_points(study, space)
    assert [t.state for t in study.trials] == [TrialState.WAITING] * 2
    sweeper(enqueue=[{"prior.sigma": 0.075}]).enqueue_points(study, space)  # not a new study: nothing added
    assert len(study.trials) == 2
