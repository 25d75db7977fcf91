"""The result tables of README.md and docs/results.md, generated from the JSON in ``benchmarks/results/``.

Every results table in those files sits between ``<!-- table: NAME -->`` and ``<!-- /table -->``; NAME is a
results file's stem and the renderer of ``benchmarks/table_renderers.py`` of that name writes the block. The
prose around the tables stays hand-written.

    python benchmarks/readme_tables.py           # rewrite the blocks from the JSON (also: --write)
    python benchmarks/readme_tables.py --check   # exit 1, naming each stale table, with a diff, when a file differs

``--file PATH`` (repeatable) checks or writes other files than the two above.
A renderer that fails (a results file re-measured in another shape, a missing key) is reported as
``renderer for NAME failed: ...`` and its block is left as it is; the other blocks are still checked or written.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # edgetune.io for --write, from this checkout
from table_renderers import RENDERERS  # noqa: E402  benchmarks/table_renderers.py

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (ROOT / "README.md", ROOT / "docs" / "results.md")  # the files with generated table blocks, checked in order
BLOCK = re.compile(r"(<!-- table: ([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.DOTALL)


def render(name: str, results: Path, renderers: dict[str, Callable[[dict[str, Any]], str]] = RENDERERS) -> str:
    """The Markdown table NAME from ``results/NAME.json`` and a line saying which code it measured; raises if the
    renderer or the file is missing or fails."""
    if name not in renderers:
        raise KeyError(f"no renderer named {name!r}")
    results_json = json.loads((results / f"{name}.json").read_text())
    return f"{renderers[name](results_json)}\n\n{provenance(name, results_json)}"


def provenance(name: str, results_json: dict[str, Any]) -> str:
    """Which commit the table measured (so a reader sees a result older than the code), as the JSON records it."""
    machine = results_json.get("machine") if isinstance(results_json.get("machine"), dict) else {}
    commit = results_json.get("commit") or machine.get("commit")
    where = f"`benchmarks/results/{name}.json`"
    if not commit:
        return f"<sub>{where}: no commit recorded (measured before the benchmarks recorded one).</sub>"
    dirty = " (with uncommitted changes)" if machine.get("dirty") else ""
    return f"<sub>{where}: measured on commit `{str(commit)[:7]}`{dirty}.</sub>"


def regenerate(text: str, results: Path) -> tuple[str, list[str]]:
    """Markdown text with every table block rendered from the JSON, and one line per block that failed."""
    failures: list[str] = []

    def block(m: re.Match[str]) -> str:
        name = m.group(2)
        try:
            table = render(name, results)
        except Exception as exc:  # any failure of one renderer is reported, the others still run
            failures.append(f"renderer for {name} failed: {type(exc).__name__}: {exc}")
            return m.group(0)
        return f"{m.group(1)}{table}\n{m.group(4)}"

    return BLOCK.sub(block, text), failures


def table_names(text: str) -> list[str]:
    """The names of the table blocks in Markdown text, in order."""
    return [m.group(2) for m in BLOCK.finditer(text)]


def stale_tables(text: str, results: Path) -> list[str]:
    """The names of the blocks in TEXT whose table differs from what the JSON renders (a failed renderer aside)."""
    stale = []
    for m in BLOCK.finditer(text):
        try:
            table = render(m.group(2), results)
        except Exception:  # reported by regenerate() as a failure, not as a stale table
            continue
        if m.group(3) != f"{table}\n":
            stale.append(m.group(2))
    return stale


def _shown(path: Path) -> str:
    """PATH relative to the checkout where it lies inside it (``docs/results.md``), else as given."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def check(path: Path, results: Path) -> tuple[bool, str]:
    """Whether a Markdown file equals its regenerated self, and a report: one line per stale table and per failed
    renderer, then a unified diff."""
    text = path.read_text()
    new, failures = regenerate(text, results)
    stale = [f"{_shown(path)}: table {name} is stale (differs from benchmarks/results/{name}.json)"
             for name in stale_tables(text, results)]  # fmt: skip
    diff = "".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                        f"{path.name} (as committed)", f"{path.name} (from the JSON)"))  # fmt: skip
    return not failures and not diff, "\n".join([*stale, *failures, diff]).strip()


def check_all(paths: Sequence[Path], results: Path) -> tuple[bool, str]:
    """check() over every file: whether all match, and their reports joined."""
    outcomes = [check(path, results) for path in paths]
    return all(ok for ok, _ in outcomes), "\n".join(report for _, report in outcomes if report)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the table blocks from the JSON (the default)")
    mode.add_argument("--check", action="store_true", help="exit 1, naming each stale table, when a file differs")
    ap.add_argument("--file", "--readme", dest="files", type=Path, action="append", default=None,
                    help="a Markdown file of tables (repeatable; default: README.md, docs/results.md)")  # fmt: skip
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    files: list[Path] = args.files or list(TARGETS)

    if args.check:
        ok, report = check_all(files, args.results)
        if report:
            print(report)
        if ok:
            print(f"{sum(len(table_names(f.read_text())) for f in files)} tables match the JSON")
        return 0 if ok else 1
    from edgetune.io import atomic_write_text

    failures: list[str] = []
    written = 0
    for path in files:
        text = path.read_text()
        new, failed = regenerate(text, args.results)
        if new != text:
            atomic_write_text(path, new)
        failures += [f"{_shown(path)}: {line}" for line in failed]
        written += len(table_names(new))
    print("\n".join(failures) or f"wrote {written} tables")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
