"""The test suite's own layout: helpers live in tests/support (or a conftest),
never in a module named like a test, and no test module imports another.

A helper in a test module runs that module's tests' collection wherever it is
imported, and hides where the shared code is; this keeps it in one place."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def test_only_tests_and_conftests_outside_support() -> None:
    strays = [
        str(p.relative_to(TESTS))
        for p in _modules()
        if p.parent.name != "support" and not p.name.startswith("test_") and p.name != "conftest.py"
    ]
    assert strays == [], f"helper modules outside tests/support: {strays}"


def test_no_module_imports_a_test_module() -> None:
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("tests.") and any(part.startswith("test_") for part in name.split(".")):
                    offenders.append(f"{path.relative_to(TESTS)}:{node.lineno} imports {name}")
    assert offenders == [], "helpers imported from test modules (move them to tests/support):\n" + "\n".join(offenders)
