"""A throwaway deployment on loopback: PKI, gateway config, client config.

Used by `redirgate demo` and by the end-to-end tests, so both exercise the
very files a new user writes by hand (README).  Everything lives under one
directory; the configs are TOML as documented in `gateway.config` and
`client.config`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redirgate.gateway import pki

__all__ = ["LabRoute", "make_pki", "write_client_config", "write_gateway_config"]

GATEWAY_NAME = "gateway.local"


@dataclass(frozen=True)
class LabRoute:
    name: str
    device: str
    client: str = "thin-01"
    listen: str = "127.0.0.1:0"
    protocol: str | None = None
    tls: bool = False
    allow: Sequence[str] | None = None
    #: with tls: the hypervisor certificate names allowed (None: the key is left out)
    hypervisors: Sequence[str] | None = None
    extra: dict[str, object] = field(default_factory=dict)


def make_pki(directory: Path, *, clients: Sequence[str] = ("thin-01",), hypervisors: Sequence[str] = ()) -> Path:
    """A CA, a gateway certificate for 127.0.0.1, and the named leaves."""
    base = directory / "pki"
    pki.init_ca(base)
    pki.issue_gateway(base, GATEWAY_NAME, ips=["127.0.0.1", "::1"], dns_names=["localhost"])
    for name in clients:
        pki.issue_client(base, name)
    for name in hypervisors:
        pki.issue_hypervisor(base, name)
    return base


def _q(text: object) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_gateway_config(
    directory: Path,
    routes: Sequence[LabRoute],
    *,
    tunnel_listen: str = "127.0.0.1:0",
    heartbeat_interval_s: float = 10.0,
    heartbeat_timeout_s: float = 30.0,
    handshake_timeout_s: float = 10.0,
    hold_timeout_s: float = 0.0,
    **bounds: float,
) -> Path:
    """`bounds`: more [gateway] keys as they are (max_devices_per_client = 4, ...)."""
    base = directory / "pki"
    gw = pki.gateway_dir(base, GATEWAY_NAME)
    lines = [
        "[gateway]",
        f"tunnel_listen = {_q(tunnel_listen)}",
        f"cert = {_q(gw / 'server-cert.pem')}",
        f"key = {_q(gw / 'server-key.pem')}",
        f"ca = {_q(base / 'ca-cert.pem')}",
        f"crl = {_q(base / 'crl.pem')}",
        f"admin_socket = {_q(directory / 'gateway.sock')}",
        'public_host = "127.0.0.1"',
        f"heartbeat_interval_s = {heartbeat_interval_s}",
        f"heartbeat_timeout_s = {heartbeat_timeout_s}",
        f"handshake_timeout_s = {handshake_timeout_s}",
        f"hold_timeout_s = {hold_timeout_s}",
        *(f"{key} = {value}" for key, value in bounds.items()),
    ]
    for route in routes:
        lines += [
            "",
            "[[route]]",
            f"name = {_q(route.name)}",
            f"listen = {_q(route.listen)}",
            f"client = {_q(route.client)}",
            f"device = {_q(route.device)}",
        ]
        if route.protocol:
            lines.append(f"protocol = {_q(route.protocol)}")
        if route.allow is not None:
            lines.append("allow = [" + ", ".join(_q(a) for a in route.allow) + "]")
        for key, value in route.extra.items():
            lines.append(f"{key} = {_q(value) if isinstance(value, str) else str(value).lower()}")
        if route.tls:
            lines += [
                "[route.tls]",
                f"cert = {_q(gw / 'server-cert.pem')}",
                f"key = {_q(gw / 'server-key.pem')}",
                f"ca = {_q(base / 'ca-cert.pem')}",
            ]
            if route.hypervisors is not None:
                lines.append("hypervisors = [" + ", ".join(_q(h) for h in route.hypervisors) + "]")
    path = directory / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_client_config(
    directory: Path,
    gateway_port: int,
    *,
    name: str = "thin-01",
    virtual: Sequence[str] = (),
    usb_ids: Sequence[str] = (),
    extra_export: str = "",
    file_name: str | None = None,
    gateway_host: str = "127.0.0.1",
    crl: Path | None = None,
) -> Path:
    base = directory / "pki"
    cdir = pki.client_dir(base, name)
    lines = [
        "[client]",
        f'gateway = "{gateway_host}:{gateway_port}"',
        f"server_name = {_q(GATEWAY_NAME)}",
        f"cert = {_q(cdir / 'client-cert.pem')}",
        f"key = {_q(cdir / 'client-key.pem')}",
        f"ca = {_q(base / 'ca-cert.pem')}",
        *([f"crl = {_q(crl)}"] if crl is not None else []),
        "",
        "[export]",
        "virtual = [" + ", ".join(_q(v) for v in virtual) + "]",
        "usb_ids = [" + ", ".join(_q(v) for v in usb_ids) + "]",
    ]
    if extra_export:
        lines.append(extra_export)
    path = directory / (file_name or f"client-{name}.toml")
    path.write_text("\n".join(lines) + "\n")
    return path
