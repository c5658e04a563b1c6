"""A good gateway.toml (two routes) and how a test writes one, with the
certificate files it names, into a directory (tests/gateway)."""

from __future__ import annotations

from pathlib import Path

GOOD = """\
[gateway]
tunnel_listen = "127.0.0.1:7443"
cert = "gw.pem"
key = "gw.key"
ca = "ca.pem"
crl = "crl.pem"
public_host = "gw.example"

[[route]]
name = "stick"
listen = "127.0.0.1:5001"
client = "thin-01"
device = "usb:1209:0001"

[[route]]
name = "keyboard"
listen = "0.0.0.0:5002"
client = "thin-01"
device = "usb-port:1-2.3"
allow = ["10.0.0.0/8", "192.168.1.7"]
"""


def write(tmp_path: Path, text: str) -> Path:
    for name in ("gw.pem", "gw.key", "ca.pem", "crl.pem"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path
