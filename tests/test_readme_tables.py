"""The result tables of README.md and docs/results.md equal what benchmarks/readme_tables.py renders from
benchmarks/results/*.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import readme_tables  # noqa: E402  benchmarks/readme_tables.py


def test_readme_tables_match_the_json() -> None:
    """The script's own ``--check``, in a fresh interpreter, to show it needs no torch (CI's fast tier, < 1 s)."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import readme_tables as r; rc = r.main(['--check']); "
            "assert 'torch' not in sys.modules; sys.exit(rc)")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, "result tables differ from the JSON; run `python benchmarks/readme_tables.py`:\n" \
                                f"{run.stdout}{run.stderr}"  # fmt: skip


def test_the_check_covers_the_readme_and_docs_results() -> None:
    assert readme_tables.TARGETS == (ROOT / "README.md", ROOT / "docs" / "results.md")


def test_every_renderer_has_a_block() -> None:
    names = [name for path in readme_tables.TARGETS for name in readme_tables.table_names(path.read_text())]
    assert sorted(names) == sorted(readme_tables.RENDERERS) and len(set(names)) == len(names)


def test_check_names_the_stale_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rankmean.json").write_text((ROOT / "benchmarks/results/rankmean.json").read_text())
    (tmp_path / "hadskip.json").write_text((ROOT / "benchmarks/results/hadskip.json").read_text())
    fresh, stale = tmp_path / "fresh.md", tmp_path / "stale.md"
    fresh.write_text("<!-- table: hadskip -->\n<!-- /table -->\n")
    stale.write_text("<!-- table: rankmean -->\n| old |\n<!-- /table -->\n")
    assert readme_tables.main(["--file", str(fresh), "--results", str(tmp_path)]) == 0  # no flag: rewrite
    assert readme_tables.main(["--check", "--file", str(fresh), "--file", str(stale), "--results", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{stale}: table rankmean is stale (differs from benchmarks/results/rankmean.json)" in out
    assert "hadskip" not in out.replace("wrote 1 tables", "")
    assert readme_tables.main(["--file", str(stale), "--results", str(tmp_path)]) == 0
    assert readme_tables.main(["--check", "--file", str(fresh), "--file", str(stale), "--results", str(tmp_path)]) == 0
    assert "2 tables match the JSON" in capsys.readouterr().out


def test_a_broken_renderer_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "hadskip.json").write_text(json.dumps({"results": {"full": {}}}))
    text = "a\n<!-- table: hadskip -->\n| old |\n<!-- /table -->\n<!-- table: nosuch -->\n<!-- /table -->\n"
    new, failures = readme_tables.regenerate(text, tmp_path)
    assert new == text
    assert failures[0].startswith("renderer for hadskip failed: KeyError")
    assert failures[1].startswith("renderer for nosuch failed:")


def test_write_then_check(tmp_path: Path) -> None:
    (tmp_path / "rankmean.json").write_text((ROOT / "benchmarks/results/rankmean.json").read_text())
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- table: rankmean -->\nstale\n<!-- /table -->\ny\n")
    ok, report = readme_tables.check(readme, tmp_path)
    assert not ok and "-stale" in report
    assert readme_tables.main(["--write", "--readme", str(readme), "--results", str(tmp_path)]) == 0
    assert readme_tables.check(readme, tmp_path) == (True, "")
    assert "| plain average |" in readme.read_text() and readme.read_text().endswith("<!-- /table -->\ny\n")


def test_skip_sets_are_shown_as_runs_of_blocks() -> None:
    from table_renderers import block_runs  # benchmarks/ is on the path (above)

    assert block_runs([1, 5, 6]) == "1, 5-6"
    assert block_runs([6, 1, 2, 3]) == "1-3, 6"
    assert block_runs([4]) == "4"
