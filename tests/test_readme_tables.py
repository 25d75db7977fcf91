"""The README's result tables equal what benchmarks/readme_tables.py renders from benchmarks/results/*.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import readme_tables  # noqa: E402  benchmarks/readme_tables.py


def test_readme_tables_match_the_json() -> None:
    """In a fresh interpreter, to show the check needs no torch (CI's fast tier, < 1 s)."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import readme_tables as r; ok, report = r.check("
            "r.ROOT / 'README.md', r.ROOT / 'benchmarks' / 'results'); print(report); "
            "assert 'torch' not in sys.modules; sys.exit(0 if ok else 1)")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, "README tables differ from the JSON; run `python benchmarks/readme_tables.py " \
                                f"--write`:\n{run.stdout}{run.stderr}"  # fmt: skip


def test_every_renderer_has_a_block() -> None:
    names = readme_tables.table_names((ROOT / "README.md").read_text())
    assert sorted(names) == sorted(readme_tables.RENDERERS) and len(set(names)) == len(names)


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
