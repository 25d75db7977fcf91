"""A user's mistake is one red line and exit code 2 on every command, also where torch is not installed (a
device that only predicts): the command line recognises the project's errors by their common base class, so
reporting one imports nothing the command did not need."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgetune.data import DataError
from edgetune.errors import EdgetuneError
from edgetune.io import OutputError
from edgetune_format.errors import PackageError
from edgetune_format.personal import PersonalStateError

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
