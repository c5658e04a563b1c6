"""What a hypervisor needs to attach a VM to a route: libvirt XML or QEMU arguments.

QEMU's chardev must reconnect on its own, because a route's device comes and
goes with its thin client: 7.2 spells it `reconnect=SECONDS`, 9.2 and later
`reconnect-ms=` (and later drop `reconnect`), so `--qemu-version` picks.  A
route with TLS gets the `tls-creds-x509` object QEMU reads from a directory
written by `redirgate pki issue-hypervisor`.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from redirgate.gateway.config import GatewayConfig, Route

__all__ = ["RECONNECT_S", "libvirt_xml", "qemu_args"]

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
) -> list[str]:
    chardev_id = f"rg-{route.name}"
    reconnect = f"reconnect-ms={reconnect_s * 1000}" if qemu_version >= (9, 2) else f"reconnect={reconnect_s}"
    chardev = f"socket,id={chardev_id},host={config.public_host},port={route.listen.port},{reconnect}"
    args: list[str] = []
    if route.tls:
        args += ["-object", f"tls-creds-x509,id={chardev_id}-tls,endpoint=client,dir={tls_dir}"]
        chardev += f",tls-creds={chardev_id}-tls"
    args += ["-chardev", chardev]
    if _usb_kind(route):
        if bus == "xhci.0":
            args = ["-device", "qemu-xhci,id=xhci", *args]
        args += ["-device", f"usb-redir,chardev={chardev_id},bus={bus}"]
    elif route.device.scheme.value == "parallel":
        args += ["-parallel", f"chardev:{chardev_id}"]
    else:
        args += ["-serial", f"chardev:{chardev_id}"]
    return args
