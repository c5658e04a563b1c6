"""The distribution installs every subpackage under `redirgate` and nothing else.

Builds a real wheel from the checkout and compares its contents with the
folders that hold an __init__.py, so a subpackage missing from pyproject's
`packages` list fails here instead of on a user's machine.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> package, as pyproject's package-dir maps them (every top-level package of ours)
MAPPED = {
    folder: dotted
    for dotted, folder in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ].items()
}


def source_packages() -> set[str]:
    found = set()
    for folder, dotted in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([dotted, *rel.parts]))
    return found


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert listed == source_packages()


def test_wheel_contains_only_the_redirgate_namespace(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("redirgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"redirgate"}
    in_wheel = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert in_wheel == source_packages()
    assert "redirgate/__init__.py" not in names  # implicit namespace package
    assert all(f"{p.replace('.', '/')}/py.typed" in names for p in MAPPED.values())
