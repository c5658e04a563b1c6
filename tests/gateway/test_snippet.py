"""Snippets for a route: the QEMU arguments are accepted by the real QEMU."""

from __future__ import annotations

import shlex
import subprocess
import xml.dom.minidom
from pathlib import Path

import pytest

from redirgate.gateway.config import load_config
from redirgate.gateway.snippet import libvirt_xml, libvirt_xml_all, qemu_args, qemu_args_all
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


def test_several_routes_share_one_usb_controller(tmp_path):
    cfg = config(tmp_path)
    args = qemu_args_all(cfg, cfg.routes, qemu_version=(10, 2))
    assert sum(a.startswith("qemu-xhci,") for a in args) == 1
    assert sum(a.startswith("usb-redir,") for a in args) == len(cfg.routes)
    assert not any("reconnect=" in a for a in args) and any("reconnect-ms=2000" in a for a in args)
    xml_text = libvirt_xml_all(cfg, cfg.routes)
    doc = xml.dom.minidom.parseString(f"<devices>{xml_text}</devices>")
    assert len(doc.getElementsByTagName("redirdev")) == len(cfg.routes)


@pytest.mark.system
def test_real_qemu_accepts_several_routes_at_once(tmp_path):
    require_system("qemu-system-x86_64")
    cfg = config(tmp_path)
    plain = [r for r in cfg.routes if r.tls is None]
    assert len(plain) >= 2
    args = [a.replace("host=gw.example", "host=127.0.0.1") for a in qemu_args_all(cfg, plain)]
    out = subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-S", "-display", "none", "-nodefaults", "-monitor", "stdio", *args],
        input="quit\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"{shlex.join(args)}\n{out.stderr}"
    # the single-route snippets pasted together are what QEMU refused before
    twice = [a for route in plain for a in qemu_args(cfg, route)]
    assert sum(a.startswith("qemu-xhci,") for a in twice) == 2
