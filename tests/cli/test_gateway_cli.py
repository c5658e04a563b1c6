"""`redirgate demo`, `gateway check|run|status|snippet`, `client run`: real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from tests.support.gateway_procs import running_client, running_gateway
from tests.support.waiting import wait_until


def redirgate(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redirgate.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_demo_once_checks_every_route() -> None:
    out = redirgate("demo", "--once")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Device 1209:0001 redirgate Virtual Flash Drive" in out.stdout
    assert "Device 1209:0002 redirgate Virtual Keyboard" in out.stdout
    assert "-device usb-redir,chardev=rg-stick" in out.stdout
    assert "<redirdev bus='usb' type='tcp'>" in out.stdout
    assert "all routes answered" in out.stdout


def test_gateway_check_names_every_mistake_with_its_line(tmp_path: Path) -> None:
    make_pki(tmp_path)
    good = write_gateway_config(tmp_path, [LabRoute("stick", "usb:1209:0001")])
    ok = redirgate("gateway", "check", "--config", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "stick" in ok.stdout and "loopback only" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('device = "usb:1209:0001"', 'device = "usb:12"\nbogus = 1'))
    out = redirgate("gateway", "check", "--config", str(bad))
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert any("route[0].device" in line and f"{bad}:" in line for line in lines), out.stderr
    assert any("bogus" in line and "unknown key" in line for line in lines), out.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[gateway\n")
    out = redirgate("gateway", "check", "--config", str(broken))
    assert out.returncode == 1 and "not valid TOML" in out.stderr


def test_snippet_for_a_route(tmp_path: Path) -> None:
    make_pki(tmp_path)
    config = write_gateway_config(tmp_path, [LabRoute("stick", "usb:1209:0001", listen="127.0.0.1:5001")])
    qemu = redirgate("gateway", "snippet", "--config", str(config), "stick", "--qemu")
    assert qemu.returncode == 0, qemu.stderr
    assert "port=5001,reconnect=2" in qemu.stdout and "usb-redir,chardev=rg-stick" in qemu.stdout
    newer = redirgate("gateway", "snippet", "--config", str(config), "stick", "--qemu", "--qemu-version", "9.2")
    assert "reconnect-ms=2000" in newer.stdout
    xml = redirgate("gateway", "snippet", "--config", str(config), "stick", "--libvirt")
    assert 'service="5001"' in xml.stdout and "<reconnect enabled='yes'" in xml.stdout
    missing = redirgate("gateway", "snippet", "--config", str(config), "nope", "--qemu")
    assert missing.returncode == 2 and "no route 'nope'" in missing.stderr


def test_status_shows_client_routes_and_channel_bytes(tmp_path: Path) -> None:
    make_pki(tmp_path)
    image = tmp_path / "stick.img"
    image.write_bytes(bytes(4 * 1024 * 1024))
    config = write_gateway_config(tmp_path, [LabRoute("stick", "usb:1209:0001")])
    with running_gateway(config, tmp_path / "gateway.log") as gw:
        client_config = write_client_config(tmp_path, gw.tunnel_port, virtual=[f"virtual:storage:{image}"])
        with running_client(client_config, tmp_path / "client.log"):

            def online() -> subprocess.CompletedProcess[str] | None:
                out = redirgate("gateway", "status", "--config", str(config))
                return out if "thin-01 from" in out.stdout and "usb:1209:0001" in out.stdout else None

            out = wait_until(online, "thin-01 and its stick in `gateway status`", detail=gw.log)
            probed = redirgate("probe", f"127.0.0.1:{gw.routes['stick']}", "--timeout", "20")
            assert probed.returncode == 0, probed.stderr + gw.log()
            assert "Virtual Flash Drive" in probed.stdout
            as_json = redirgate("gateway", "status", "--config", str(config), "--json")
    assert "clients online: 1" in out.stdout
    assert "stick: 127.0.0.1:" in out.stdout
    assert '"channels_served": 1' in as_json.stdout
    gone = redirgate("gateway", "status", "--config", str(config))
    assert gone.returncode == 1 and "no gateway answers" in gone.stderr
