"""`redirgate install-service`: the shipped units, rules and configs, and `systemd-analyze verify` on the units."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from redirgate.cli.install_service import planned_files, unit_text
from tests.support.system import require_system


def redirgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "redirgate.cli", *args], capture_output=True, text=True, timeout=60)


def test_dry_run_prints_every_file_and_writes_nothing(tmp_path: Path) -> None:
    out = redirgate("install-service", "client", "--dry-run", "--root", str(tmp_path))
    assert out.returncode == 0, out.stderr
    for planned in planned_files("client"):
        assert f"write  {tmp_path / planned.path}" in out.stdout
    assert "Type=notify" in out.stdout and "DeviceAllow=char-usb_device rw" in out.stdout
    assert 'GROUP="redirgate"' in out.stdout  # the udev rules
    assert list(tmp_path.iterdir()) == []


def test_install_under_a_root_keeps_an_edited_config(tmp_path: Path) -> None:
    assert redirgate("install-service", "gateway", "--root", str(tmp_path)).returncode == 0
    unit = tmp_path / "etc/systemd/system/redirgate-gateway.service"
    config = tmp_path / "etc/redirgate/gateway.toml"
    assert (
        unit.read_text() == unit_text("gateway") and f"ExecStart={sys.executable} -m redirgate.cli" in unit.read_text()
    )
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    config.write_text("# edited by the admin\n")
    again = redirgate("install-service", "gateway", "--root", str(tmp_path))
    assert again.returncode == 0 and f"keep   {config} (exists)" in again.stdout
    assert config.read_text() == "# edited by the admin\n"


@pytest.mark.system
def test_systemd_analyze_verify_passes_on_both_units(tmp_path: Path) -> None:
    analyze = require_system("systemd-analyze")  # Debian package systemd
    for kind in ("gateway", "client"):
        assert redirgate("install-service", kind, "--root", str(tmp_path)).returncode == 0
    units = sorted((tmp_path / "etc/systemd/system").glob("*.service"))
    assert [u.name for u in units] == ["redirgate-client.service", "redirgate-gateway.service"]
    out = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=120)
    # verify exits 0 on unknown keys: any word from it is a finding
    assert out.returncode == 0 and out.stderr == "" and out.stdout == "", out.stdout + out.stderr
    for unit in units:
        text = unit.read_text()
        for directive in (
            "Type=notify",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "WatchdogSec=",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "User=redirgate",
            "StateDirectory=redirgate",
        ):
            assert directive in text, (unit.name, directive)


@pytest.mark.system
def test_verify_would_see_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported."""
    analyze = require_system("systemd-analyze")
    broken = tmp_path / "broken.service"
    broken.write_text(unit_text("gateway").replace("Type=notify", "Typ=notify"))
    out = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=120)
    assert "Unknown key" in out.stderr
