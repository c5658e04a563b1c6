"""Snippets for a route: the QEMU arguments are accepted by the real QEMU."""

from __future__ import annotations

import shlex
import subprocess
import xml.dom.minidom
from pathlib import Path

import pytest

from redirgate.gateway.config import load_config
from redirgate.gateway.snippet import libvirt_xml, qemu_args
from tests.support.gateway_configs import GOOD, write
from tests.support.system import require_system


def config(tmp_path: Path):
    text = (
        GOOD
        + '\n[[route]]\nname = "tls-stick"\nlisten = "0.0.0.0:5003"\nclient = "t"\ndevice = "usb:0001:0002"\n[route.tls]\ncert = "gw.pem"\nkey = "gw.key"\nca = "ca.pem"\n'
    )
    return load_config(write(tmp_path, text))


def test_libvirt_xml_is_well_formed_with_reconnect(tmp_path):
    cfg = config(tmp_path)
    for route in cfg.routes:
        snippet = libvirt_xml(cfg, route)
        doc = xml.dom.minidom.parseString(f"<devices>{snippet}</devices>")
        (redirdev,) = doc.getElementsByTagName("redirdev")
        source = redirdev.getElementsByTagName("source")[0]
        assert source.getAttribute("host") == "gw.example"
        assert source.getAttribute("service") == str(route.listen.port)
        assert redirdev.getElementsByTagName("reconnect")[0].getAttribute("enabled") == "yes"
        assert (source.getAttribute("tls") == "yes") == (route.tls is not None)


def test_qemu_versions_spell_reconnect_differently(tmp_path):
    cfg = config(tmp_path)
    route = cfg.routes[0]
    assert any("reconnect=2" in a for a in qemu_args(cfg, route))
    assert any("reconnect-ms=2000" in a for a in qemu_args(cfg, route, qemu_version=(9, 2)))
    tls_args = qemu_args(cfg, cfg.route("tls-stick"))
    assert any(a.startswith("tls-creds-x509,") for a in tls_args)


@pytest.mark.system
def test_real_qemu_accepts_the_arguments(tmp_path):
    require_system("qemu-system-x86_64")
    cfg = config(tmp_path)
    route = cfg.routes[0]
    args = [a.replace("host=gw.example", "host=127.0.0.1") for a in qemu_args(cfg, route)]
    # -S: parse and build the machine, do not run; quit through the monitor
    out = subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-S", "-display", "none", "-nodefaults", "-monitor", "stdio", *args],
        input="quit\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"{shlex.join(args)}\n{out.stderr}"
