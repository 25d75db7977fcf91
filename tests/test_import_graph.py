"""The project's import graph points one way: the command line on top, exporters and the device runtime in the
middle, the core at the bottom; the device runtime never reaches the planner. Every import statement counts,
function-local ones included (they are the easy ones to add by accident)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edgetune", "edgetune_format", "exporters", "device_sim", "edgetune_fleet", "edgetune_cli")


def imports_of(package: str) -> dict[str, set[str]]:
    """{module file: every project module it imports} for one top-level package."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(ROOT))] = {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module, names in imports_of(package).items()
        for name in names
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("edgetune", ("edgetune_format", "exporters", "device_sim", "edgetune_fleet", "edgetune_cli")),  # the core
        ("edgetune_format", ("exporters", "device_sim", "edgetune_fleet", "edgetune_cli")),  # both sides read it
        ("exporters", ("edgetune_cli", "edgetune_fleet")),
        # the device reads, never plans or writes, and trains with the shared loop (edgetune.top_trainer), not the
        # server's trainer
        ("device_sim", ("edgetune_cli", "edgetune.planner", "exporters", "edgetune.train", "edgetune_fleet")),
        ("edgetune_fleet", ("edgetune_cli", "edgetune.planner")),  # the simulator drives the device, never plans
    ],
)
def test_no_upward_imports(package: str, forbidden: tuple[str, ...]) -> None:
    assert offenders(package, forbidden) == []


def test_nothing_imports_the_command_line() -> None:
    outside = ("edgetune", "edgetune_format", "exporters", "device_sim", "edgetune_fleet", "examples", "benchmarks")
    users = [
        f"{path.relative_to(ROOT)}"
        for top in outside
        for path in (ROOT / top).rglob("*.py")
        if any(
            (isinstance(n, ast.ImportFrom) and (n.module or "").startswith("edgetune_cli"))
            or (isinstance(n, ast.Import) and any(a.name.startswith("edgetune_cli") for a in n.names))
            for n in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert users == []


def test_no_import_error_guards_between_our_packages() -> None:
    """A guard around our own import hides a broken install; only optional third-party packages get one."""
    guarded = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Try):
                    continue
                catches_import_error = any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                    for h in node.handlers
                )
                ours = [
                    n
                    for stmt in node.body
                    for n in ast.walk(stmt)
                    if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] in PACKAGES
                ]
                if catches_import_error and ours:
                    guarded.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert guarded == []


def test_the_graph_test_sees_an_upward_import(tmp_path, monkeypatch) -> None:
    """The checker itself: a core module that imports the runtime is reported."""
    fake = tmp_path / "edgetune"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from device_sim.package import load_package\n")
    import sys

    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert offenders("edgetune", ("device_sim",)) == [
        "edgetune/bad.py imports device_sim.package",
        "edgetune/bad.py imports device_sim.package.load_package",
    ]
