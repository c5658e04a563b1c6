"""What a hypervisor needs to attach a VM to a route: libvirt XML or QEMU arguments.

QEMU's chardev must reconnect on its own, because a route's device comes and
goes with its thin client: 7.2 spells it `reconnect=SECONDS`, 9.2 and later
`reconnect-ms=` (and 10.2 dropped `reconnect`), so `--qemu-version` picks
(default: the QEMU on this machine, else 7.2).  Several routes for one VM
share one USB controller (`qemu_args_all`, `libvirt_xml_all`): QEMU refuses
a second `id=xhci`.  A
route with TLS gets the `tls-creds-x509` object QEMU reads from a directory
written by `redirgate pki issue-hypervisor`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import quoteattr

from redirgate.gateway.config import GatewayConfig, Route

__all__ = ["RECONNECT_S", "libvirt_xml", "libvirt_xml_all", "local_qemu_version", "qemu_args", "qemu_args_all"]

RECONNECT_S = 2


def _usb_kind(route: Route) -> bool:
    return route.protocol == "usbredir"


def libvirt_xml(config: GatewayConfig, route: Route, *, reconnect_s: int = RECONNECT_S) -> str:
    host = quoteattr(config.public_host)
    service = quoteattr(str(route.listen.port))
    tls = " tls='yes'" if route.tls else ""
    source = (
        f"  <source mode='connect' host={host} service={service}{tls}>\n"
        f"    <reconnect enabled='yes' timeout='{reconnect_s}'/>\n"
        f"  </source>\n"
    )
    if _usb_kind(route):
        return (
            f"<!-- redirgate route {route.name}: {route.device} on client {route.client};"
            f" needs a USB controller, e.g. <controller type='usb' model='qemu-xhci'/> -->\n"
            f"<redirdev bus='usb' type='tcp'>\n{source}  <protocol type='raw'/>\n</redirdev>\n"
        )
    element = "parallel" if route.device.scheme.value == "parallel" else "serial"
    target = "" if element == "parallel" else "  <target type='isa-serial'><model name='isa-serial'/></target>\n"
    return (
        f"<!-- redirgate route {route.name}: {route.device} on client {route.client} -->\n"
        f"<{element} type='tcp'>\n{source}  <protocol type='raw'/>\n{target}</{element}>\n"
    )


def qemu_args(
    config: GatewayConfig,
    route: Route,
    *,
    qemu_version: tuple[int, int] = (7, 2),
    reconnect_s: int = RECONNECT_S,
    tls_dir: str = "/etc/pki/qemu-redirgate",
    bus: str = "xhci.0",
    controller: bool = True,
) -> list[str]:
    """One route's arguments; `controller=False` leaves out the xHCI controller (`qemu_args_all` adds one)."""
    chardev_id = f"rg-{route.name}"
    reconnect = f"reconnect-ms={reconnect_s * 1000}" if qemu_version >= (9, 2) else f"reconnect={reconnect_s}"
    chardev = f"socket,id={chardev_id},host={config.public_host},port={route.listen.port},{reconnect}"
    args: list[str] = []
    if route.tls:
        args += ["-object", f"tls-creds-x509,id={chardev_id}-tls,endpoint=client,dir={tls_dir}"]
        chardev += f",tls-creds={chardev_id}-tls"
    args += ["-chardev", chardev]
    if _usb_kind(route):
        if bus == "xhci.0" and controller:
            args = ["-device", _XHCI, *args]
        args += ["-device", f"usb-redir,chardev={chardev_id},bus={bus}"]
    elif route.device.scheme.value == "parallel":
        args += ["-parallel", f"chardev:{chardev_id}"]
    else:
        args += ["-serial", f"chardev:{chardev_id}"]
    return args


#: one xHCI controller with room for 15 USB 2 and 15 USB 3 devices
_XHCI = "qemu-xhci,id=xhci,p2=15,p3=15"


def qemu_args_all(config: GatewayConfig, routes: Sequence[Route], **options: Any) -> list[str]:
    """Several routes for one VM: one USB controller, then each route (QEMU refuses a second id=xhci)."""
    args: list[str] = []
    if any(_usb_kind(r) for r in routes) and options.get("bus", "xhci.0") == "xhci.0":
        args += ["-device", _XHCI]
    for route in routes:
        args += qemu_args(config, route, controller=False, **options)
    return args


def libvirt_xml_all(config: GatewayConfig, routes: Sequence[Route], **options: Any) -> str:
    """Several routes for one VM; USB ones share the domain's one USB controller."""
    parts = []
    if any(_usb_kind(r) for r in routes):
        parts.append(
            "<!-- the USB devices below share one USB controller; if the domain has none, add:\n"
            "     <controller type='usb' model='qemu-xhci' ports='15'/> -->\n"
        )
    parts += [libvirt_xml(config, route, **options) for route in routes]
    return "".join(parts)


def local_qemu_version(program: str = "qemu-system-x86_64") -> tuple[int, int] | None:
    """The version of the QEMU on this machine, or None (not installed, or it says something else)."""
    import shutil
    import subprocess

    path = shutil.which(program)
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"version (\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else None
