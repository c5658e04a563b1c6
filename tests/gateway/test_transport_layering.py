"""redirgate.gateway.transport stays free of gateway state: the client may import it.

Walks every module of the transport package (source imports, statically,
and sys.modules after importing it in a fresh interpreter) and refuses any
redirgate.gateway module outside transport and anything from
redirgate.client.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import redirgate.gateway.transport as transport

PACKAGE = "redirgate.gateway.transport"


def _allowed(module: str) -> bool:
    if module == PACKAGE or module.startswith(PACKAGE + "."):
        return True
    if module.startswith("redirgate.client"):
        return False
    return not (module == "redirgate.gateway" or module.startswith("redirgate.gateway."))


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports"
            assert node.module is not None
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_transport_sources_import_nothing_from_the_gateway_or_client() -> None:
    files = sorted(Path(transport.__file__).parent.rglob("*.py"))
    assert len(files) >= 5
    bad = {f"{f.name}: {m}" for f in files for m in _imports(f) if m.startswith("redirgate") and not _allowed(m)}
    assert not bad, bad


def test_importing_transport_loads_no_gateway_state() -> None:
    code = (
        "import sys, pkgutil, importlib\n"
        "import redirgate.gateway.transport as t\n"
        "for info in pkgutil.walk_packages(t.__path__, 'redirgate.gateway.transport.'):\n"
        "    importlib.import_module(info.name)\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('redirgate')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = out.stdout.split()
    assert PACKAGE in loaded
    # the parent package's __init__ is loaded by Python itself; it must stay empty of state
    bad = [m for m in loaded if not _allowed(m) and m != "redirgate.gateway"]
    assert not bad, bad
    parent = Path(transport.__file__).parent.parent / "__init__.py"
    assert not [n for n in ast.parse(parent.read_text()).body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))], (
        "redirgate/gateway/__init__.py must stay a docstring: importing transport runs it"
    )
