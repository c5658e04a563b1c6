"""redirgate.proto stays sans-IO: importing it pulls in no I/O or logging."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ["trio", "socket", "ssl", "threading", "usb", "serial", "logging", "redirgate.client", "redirgate.gateway"]


def test_proto_imports_no_io_modules():
    code = (
        "import sys, pkgutil, importlib\n"
        "import redirgate.proto as p\n"
        "for info in pkgutil.walk_packages(p.__path__, 'redirgate.proto.'):\n"
        "    importlib.import_module(info.name)\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "", f"proto imported: {out.stdout.strip()}"
