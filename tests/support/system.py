"""Gatekeeping for tests that need a system component (QEMU, libusbredirparser).

A missing component skips the test on a developer machine and FAILS it in CI,
where `REDIRGATE_REQUIRE_SYSTEM=1` says every component must be present: a CI
image that silently lost QEMU must not turn the suite green.  Tests never skip
unconditionally; they call :func:`require` (or a helper built on it).
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
from pathlib import Path

import pytest

__all__ = [
    "REQUIRE_ENV",
    "libusbredirparser_path",
    "require",
    "require_libusbredirparser",
    "require_system",
    "system_required",
]

#: Environment variable that turns a missing component into a failure.
REQUIRE_ENV = "REDIRGATE_REQUIRE_SYSTEM"

#: Where Debian 12 (libusbredirparser1 0.13) installs the reference parser.
_PARSER_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libusbredirparser.so.1",
    "/usr/lib/aarch64-linux-gnu/libusbredirparser.so.1",
    "/usr/lib64/libusbredirparser.so.1",
    "/usr/lib/libusbredirparser.so.1",
)


def system_required() -> bool:
    """True when missing system components must fail tests instead of skipping."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


def require(component: str, available: bool, why: str) -> None:
    """Fail (CI) or skip (elsewhere) the calling test unless `available`."""
    if available:
        return
    message = f"{component} is not available: {why}"
    if system_required():
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message)


def require_system(program: str) -> str:
    """Require an executable on PATH and return its full path."""
    path = shutil.which(program)
    require(program, path is not None, f"{program!r} not found on PATH")
    assert path is not None
    return path


def libusbredirparser_path() -> str | None:
    """Path (or loader name) of the reference parser library, None if absent.

    `REDIRGATE_LIBUSBREDIRPARSER` overrides the search, for a locally built
    reference.
    """
    override = os.environ.get("REDIRGATE_LIBUSBREDIRPARSER")
    if override:
        return override if Path(override).exists() else None
    for candidate in _PARSER_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return ctypes.util.find_library("usbredirparser")


def require_libusbredirparser() -> str:
    """Require the reference parser library and return its path."""
    path = libusbredirparser_path()
    require(
        "libusbredirparser",
        path is not None,
        "install libusbredirparser1 (Debian: apt-get install libusbredirparser1)",
    )
    assert path is not None
    return path
