"""The README's result tables, generated from the JSON in ``benchmarks/results/``.

Every results table in README.md sits between ``<!-- table: NAME -->`` and ``<!-- /table -->``; NAME is a
results file's stem and the renderer of ``benchmarks/table_renderers.py`` of that name writes the block. The
prose around the tables stays hand-written.

    python benchmarks/readme_tables.py --write   # rewrite the blocks from the JSON
    python benchmarks/readme_tables.py --check   # exit 1 with a diff when README.md differs

A renderer that fails (a results file re-measured in another shape, a missing key) is reported as
``renderer for NAME failed: ...`` and its block is left as it is; the other blocks are still checked or written.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # edgetune.io for --write, from this checkout
from table_renderers import RENDERERS  # noqa: E402  benchmarks/table_renderers.py

ROOT = Path(__file__).resolve().parent.parent
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
    """README text with every table block rendered from the JSON, and one line per block that failed."""
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
    """The names of the table blocks in README text, in order."""
    return [m.group(2) for m in BLOCK.finditer(text)]


def check(readme: Path, results: Path) -> tuple[bool, str]:
    """Whether README.md equals its regenerated self, and a report (failures and a unified diff)."""
    text = readme.read_text()
    new, failures = regenerate(text, results)
    diff = "".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                        f"{readme.name} (as committed)", f"{readme.name} (from the JSON)"))  # fmt: skip
    return not failures and not diff, "\n".join([*failures, diff]).strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the README's table blocks from the JSON")
    mode.add_argument("--check", action="store_true", help="exit 1 with a diff when the README differs")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    if args.check:
        ok, report = check(args.readme, args.results)
        if report:
            print(report)
        if ok:
            print(f"{len(table_names(args.readme.read_text()))} tables match the JSON")
        return 0 if ok else 1
    from edgetune.io import atomic_write_text

    text = args.readme.read_text()
    new, failures = regenerate(text, args.results)
    if new != text:
        atomic_write_text(args.readme, new)
    print("\n".join(failures) or f"wrote {len(table_names(new))} tables")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
