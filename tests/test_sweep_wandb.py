"""W&B for an Optuna sweep: the objective as a summary metric of every trial run, and one summary
run per study (trials table and report plots) in the trials' group. Offline runs, read back from
their files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2

from tests.conftest import run_cli
from tests.wandb_records import raw_records


def records(run_file: Path, kind: str) -> list:
    found = []
    for raw in raw_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == kind:
            found.append(getattr(record, kind))
    return found


@pytest.mark.heavy
def test_sweep_writes_a_wandb_summary_run_beside_its_trials(tmp_path):
    args = [
        "-m",
        "hparams_search=mfvi_prior",
        "preset=small",
        "logger=wandb",
        "num_threads=1",
        "trainer.check_val_every_n_epoch=1000",
        "trainer.max_steps=5",
        "hydra.sweeper.n_trials=2",
        "optimized_metric=uce",
        "optimization_direction=minimize",
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = tmp_path / "outputs/sweeps/mfvi_prior-denoising-camera-small"
    for trial in ("0", "1"):
        (run_file,) = sweep_dir.glob(f"{trial}/wandb/offline-run-*/run-*.wandb")
        metrics = {m.name: m for m in records(run_file, "metric")}
        assert metrics["final/uce"].summary.min and not metrics["final/uce"].summary.max
        (run,) = records(run_file, "run")
        assert run.run_group == sweep_dir.name
    (summary_dir,) = sweep_dir.glob("wandb/offline-run-*")
    (run,) = records(next(summary_dir.glob("run-*.wandb")), "run")
    assert run.run_group == sweep_dir.name and run.job_type == "sweep-summary"
    (table_file,) = summary_dir.glob("files/media/table/trials_*.table.json")
    table = json.loads(table_file.read_text())
    assert [row[0] for row in table["data"]] == [0, 1]
    columns = table["columns"]
    for number, row in enumerate(table["data"]):
        metrics = json.loads((sweep_dir / str(number) / "metrics.json").read_text())
        assert row[columns.index("objective/uce")] == metrics["uce"] == row[columns.index("uce")]
        assert row[columns.index("status")] == "completed" and row[columns.index("prior.sigma")] > 0
    images = {p.name.rsplit("_", 2)[0] for p in summary_dir.glob("files/media/images/report/*.png")}
    assert {"history", "optuna_history", "optuna_parallel_coordinate", "objective_vs_prior.sigma"} <= images
