"""The slow tier's lists name tests and modules that exist (a renamed test would silently join the quick tier)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import SLOW_MODULES, SLOW_TESTS

TESTS = Path(__file__).resolve().parent


def test_the_slow_lists_name_real_tests() -> None:
    modules = {p.stem for p in TESTS.glob("test_*.py")}
    names = {
        node.name
        for path in TESTS.glob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }
    assert SLOW_MODULES <= modules, sorted(SLOW_MODULES - modules)
    assert SLOW_TESTS <= names, sorted(SLOW_TESTS - names)
