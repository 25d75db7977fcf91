"""A user's mistake is one red line and exit code 2 on every command, also where torch is not installed (a
device that only predicts): the command line recognises the project's errors by their common base class, so
reporting one imports nothing the command did not need."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from device_sim.errors import PackageError
from device_sim.personal import PersonalStateError
from edgetune.data import DataError
from edgetune.errors import EdgetuneError
from edgetune.io import OutputError

ROOT = Path(__file__).resolve().parents[1]

PREDICT_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # as on a device where torch is not installed: any import of it fails
from typer.testing import CliRunner
from edgetune_cli import app
result = CliRunner().invoke(app, ["predict", *sys.argv[1:]])
print(result.exit_code)
print(result.output)
"""


@pytest.mark.parametrize("error", [PackageError, PersonalStateError, DataError, OutputError])
def test_every_module_error_is_an_edgetune_error(error: type[Exception]) -> None:
    assert issubclass(error, EdgetuneError)


def test_a_bad_package_is_one_line_without_torch(tmp_path: Path) -> None:
    csv = tmp_path / "texts.csv"
    csv.write_text("text\nhello\n")
    broken = tmp_path / "pkg"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", PREDICT_WITHOUT_TORCH, "--package", str(broken), "--data", str(csv)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    code, *output = run.stdout.strip().splitlines()
    assert code == "2", run.stdout
    text = " ".join(output)
    assert "error:" in text and "manifest.json" in text
    assert "Traceback" not in run.stdout + run.stderr


def test_personalize_flags_default_to_the_settings_objects_values() -> None:
    """The command line states no default of its own: each flag that names a PersonalizeConfig field starts at
    that field's default, so the library and the command cannot drift apart."""
    import typer.main

    from device_sim.settings import PersonalizeConfig
    from edgetune_cli import app

    command = typer.main.get_command(app).commands["personalize"]
    defaults = PersonalizeConfig()
    checked = 0
    per_job = ("lr", "head_lr", "cut", "select")  # None on the command line: decided per job
    for param in command.params:
        if param.name in PersonalizeConfig.__dataclass_fields__ and param.name not in per_job:
            assert param.default == getattr(defaults, param.name), param.name
            checked += 1
    assert checked >= 10
