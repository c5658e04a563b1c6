"""Who may import whom, read from the sources (see ARCHITECTURE.md).

- ``redirgate.proto`` imports no other redirgate package (and, checked in
  tests/proto/test_layering.py, no I/O module at all);
- ``redirgate.transport`` imports only ``proto``: the client and the gateway
  both use it, so it holds neither's state;
- ``redirgate.client`` and ``redirgate.gateway`` never import each other:
  the thin client does not depend on the DMZ gateway, nor the other way;
- ``redirgate.vmside`` (the VM's side of usbredir: probe, benchmarks,
  tests) imports only ``proto`` and ``transport``; of the packages only
  the CLI imports it;
- ``redirgate.host`` (the hypervisor side: vfio, SR-IOV, live attach)
  imports only ``proto`` and ``transport``; it runs on the hypervisor, where
  neither the thin client nor the gateway needs to be;
- ``redirgate.cli`` is the one place that may use everything;
- outside ``transport/``, the transport is used through its package
  (``from redirgate.transport import X``), never through its modules.

Every ``import`` statement counts, including ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> (folder, the redirgate packages it may not import)
RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "proto": ("proto", ("transport", "client", "gateway", "vmside", "cli", "host")),
    "transport": ("transport", ("client", "gateway", "vmside", "cli", "host")),
    "client": ("client", ("gateway", "vmside", "cli", "host")),
    "gateway": ("gateway", ("client", "vmside", "cli", "host")),
    "vmside": ("vmside", ("client", "gateway", "cli", "host")),
    "host": ("host", ("client", "gateway", "vmside", "cli")),
}


def _imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of what ``path`` (a module of ``package``) imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                assert node.module is not None
                module = node.module
            found.add(module)
            if module == "redirgate":
                found.update(f"redirgate.{alias.name}" for alias in node.names)
    return found


def _package_of(path: Path, folder: str) -> str:
    relative = path.relative_to(ROOT / folder).with_suffix("").parts
    parts = ["redirgate", folder, *relative]
    return ".".join(parts if relative[-1] == "__init__" else parts[:-1]).removesuffix(".__init__")


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for module in _imported_modules(path, _package_of(path, folder)):
            parts = module.split(".")
            if len(parts) >= 2 and parts[0] == "redirgate" and parts[1] in forbidden:
                bad.append(f"{path.relative_to(ROOT)}: {module}")
    return bad


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_only_what_it_may(package: str) -> None:
    folder, forbidden = RULES[package]
    assert list((ROOT / folder).rglob("*.py")), f"no sources under {folder}/"
    assert _violations(folder, forbidden) == []


def _submodule_imports(folder: str, package: str) -> list[str]:
    """Imports of `package`'s modules (not the package itself) from under `folder`."""
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for module in _imported_modules(path, _package_of(path, folder)):
            if module.startswith(f"{package}."):
                bad.append(f"{path.relative_to(ROOT)}: {module}")
    return bad


@pytest.mark.parametrize("folder", ["client", "gateway", "vmside", "host", "cli"])
def test_transport_is_imported_from_its_package(folder: str) -> None:
    assert _submodule_imports(folder, "redirgate.transport") == []


def test_the_rule_catches_a_forbidden_import(tmp_path: Path) -> None:
    """The walker is not vacuous: a planted import is found, also inside a function."""
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "x.py").write_text("def f():\n    from redirgate.gateway.registry import Registry\n")
    (tmp_path / "client" / "y.py").write_text("from redirgate import gateway\n")
    (tmp_path / "client" / "z.py").write_text("from ..gateway import registry\n")
    (tmp_path / "client" / "ok.py").write_text("from . import x\nfrom .x import f\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert len(_violations("client", RULES["client"][1])) == 3
    finally:
        ROOT = saved
