"""docs/extending.md as written: its operator and stopping rule, copied from the page into a
package outside the project, run through launch.py's composition without touching any project
file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env

GUIDE = ROOT / "docs" / "extending.md"
FILE_BLOCK = re.compile(r"<!-- file: (?P<path>\S+) -->\n```\w*\n(?P<body>.*?)```", re.DOTALL)
COMMAND_BLOCK = re.compile(r"<!-- command -->\n```bash\n(?P<body>.*?)```", re.DOTALL)


def guide_files() -> dict[str, str]:
    return {m["path"]: m["body"] for m in FILE_BLOCK.finditer(GUIDE.read_text())}


def guide_command() -> list[str]:
    """The page's command line as arguments to launch.py (after the script path)."""
    body = COMMAND_BLOCK.search(GUIDE.read_text())["body"].replace("\\\n", " ")
    words = body.split()
    script = next(i for i, word in enumerate(words) if word.endswith("launch.py"))
    return [word.strip("'") for word in words[script + 1 :]]


@pytest.fixture
def extension(tmp_path: Path) -> Path:
    """The page's files written into a fresh directory: a package ``myext`` and a ``conf``."""
    for relative, body in guide_files().items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    (tmp_path / "myext" / "__init__.py").write_text("")
    return tmp_path


def test_the_guide_has_an_operator_and_a_stopping_rule() -> None:
    files = guide_files()
    assert {"myext/shift_blur.py", "conf/operator/shift_blur.yaml"} <= set(files)
    assert {"myext/misfit_drop.py", "conf/stopping/misfit_drop.yaml"} <= set(files)


def test_the_guide_operator_has_an_exact_adjoint(extension: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(extension))
    from dip_lightning.physics.checks import adjoint_relative_error

    module = __import__("myext.shift_blur", fromlist=["ShiftBlur"])
    assert adjoint_relative_error(module.ShiftBlur(), (16, 16)) < 1e-10


@pytest.mark.heavy
def test_the_guide_command_runs_the_new_operator_and_rule(extension: Path) -> None:
    env = cli_env(extension)
    env["PYTHONPATH"] = os.pathsep.join([str(extension), str(ROOT), env.get("PYTHONPATH", "")])
    args = [*guide_command(), "logger=none", "hydra.run.dir=run", "trainer.check_val_every_n_epoch=1000"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=extension,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((extension / "run" / "metrics.json").read_text())
    assert metrics["criterion"] == "misfit_drop"
    assert metrics["stopped_early"] is True and metrics["detected_step"] is not None
    assert metrics["steps"] < 200
    config = (extension / "run" / ".hydra" / "config.yaml").read_text()
    assert "myext.shift_blur.ShiftBlur" in config
    assert metrics["stop_reason"] == "the misfit fell to 0.3 of its first value"
    # Nothing was written into the project.
    assert not (ROOT / "myext").exists() and not (ROOT / "conf" / "operator" / "shift_blur.yaml").exists()
