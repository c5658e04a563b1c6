"""Hot plug into a running VM and out again: over QMP, or through libvirt (`virsh ... --live`).

Owns what goes over the wire for each kind of device:

- a redirgate route: ``chardev-add`` (a reconnecting TCP client socket:
  ``reconnect`` in seconds before QEMU 9.2, ``reconnect-ms`` from 9.2 on)
  then ``device_add usb-redir``; for a route whose gateway port speaks TLS,
  first ``object-add tls-creds-x509`` (endpoint client, verify-peer) on the
  directory `redirgate pki issue-hypervisor` wrote; what was added is
  removed again when a later step fails;
- ``usb-host`` by vendor:product or bus/address, ``vfio-pci`` by address;
- detach: ``device_del``, wait for QEMU's DEVICE_DELETED (a PCI device
  leaves only when the guest lets go), then ``chardev-remove`` of the
  route's chardev and ``object-del`` of its TLS credentials.  usb-redir's
  teardown deletes its chardev itself, so "not found" there is success, not
  an error.

Each function returns the lines saying what it did; the CLI prints them.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from typing import Any

from redirgate.host.errors import InvalidArgument, QmpError, VirshError
from redirgate.host.qmp import QmpClient, QmpCommandError
from redirgate.host.snippets import (
    UsbSelector,
    alias,
    pci_hostdev_xml,
    redirdev_xml,
    usb_device_properties,
    usb_hostdev_xml,
)

__all__ = [
    "Target",
    "attach_qmp",
    "chardev_id",
    "check_name",
    "default_name",
    "detach_qmp",
    "device_xml",
    "tls_id",
    "virsh_attach",
    "virsh_detach",
]

#: How long device_del may take: the guest must release a PCI device (ACPI hot unplug).
DETACH_TIMEOUT_S = 60.0
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,60}$")


@dataclasses.dataclass(frozen=True)
class Target:
    """What to plug in: a redirgate route (host, port), a host USB device, or a PCI function."""

    kind: str  # "route" | "usb-host" | "vfio-pci"
    host: str = ""
    port: int = 0
    usb: UsbSelector | None = None
    address: str = ""
    #: a route over TLS: the tls-creds-x509 directory (ca-cert.pem, client-cert.pem, client-key.pem)
    tls_dir: str | None = None

    def __str__(self) -> str:
        if self.kind == "route":
            return f"route {self.host}:{self.port}"
        if self.kind == "usb-host":
            return f"usb-host {self.usb}"
        return f"vfio-pci {self.address}"


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidArgument(name, "a device id starts with a letter and has only letters, digits, '-', '_', '.'")
    return name


def default_name(target: Target) -> str:
    if target.kind == "route":
        return f"rg-redir-{target.port}"
    if target.usb is not None:
        if target.usb.vendor is not None:
            return f"rg-usb-{target.usb.vendor:04x}-{target.usb.product:04x}"
        return f"rg-usb-{target.usb.bus}-{target.usb.address}"
    return "rg-pci-" + re.sub(r"[:.]", "-", target.address)


def chardev_id(name: str) -> str:
    return f"{name}-chardev"


def tls_id(name: str) -> str:
    return f"{name}-tls"


async def attach_qmp(qmp: QmpClient, target: Target, name: str, bus: str | None) -> list[str]:
    done: list[str] = []
    device: dict[str, Any] = {"id": name}
    if bus is not None:
        device["bus"] = bus
    if target.kind == "route":
        host, port = target.host, target.port
        reconnect: dict[str, int] = {"reconnect-ms": 1000} if qmp.version[:2] >= (9, 2) else {"reconnect": 1}
        addr = {"type": "inet", "data": {"host": host, "port": str(port)}}
        data: dict[str, Any] = {"addr": addr, "server": False, **reconnect}
        if target.tls_dir is not None:
            creds = {"qom-type": "tls-creds-x509", "id": tls_id(name), "dir": target.tls_dir, "endpoint": "client"}
            await qmp.execute("object-add", {**creds, "verify-peer": True})
            done.append(f"object-add tls-creds-x509 {tls_id(name)}: {target.tls_dir}")
            data["tls-creds"] = tls_id(name)
        try:
            await qmp.execute("chardev-add", {"id": chardev_id(name), "backend": {"type": "socket", "data": data}})
            done.append(
                f"chardev-add {chardev_id(name)}: {'TLS' if target.tls_dir else 'TCP'} client to {host}:{port},"
                " reconnecting"
            )
            try:
                await qmp.execute("device_add", {"driver": "usb-redir", "chardev": chardev_id(name), **device})
            except QmpError:
                await _remove_chardev(qmp, name)
                raise
        except QmpError:
            if target.tls_dir is not None:
                await _remove(qmp, "object-del", tls_id(name))
            raise
        done.append(f"device_add usb-redir id={name}" + (f" bus={bus}" if bus else ""))
    elif target.usb is not None:
        selector = target.usb
        await qmp.execute("device_add", {"driver": "usb-host", **usb_device_properties(selector), **device})
        done.append(f"device_add usb-host {selector} id={name}" + (f" bus={bus}" if bus else ""))
    else:
        await qmp.execute("device_add", {"driver": "vfio-pci", "host": target.address, **device})
        done.append(f"device_add vfio-pci host={target.address} id={name}" + (f" bus={bus}" if bus else ""))
    return done


async def _remove(qmp: QmpClient, command: str, ident: str) -> bool:
    """chardev-remove / object-del ``ident``; False when QEMU has no such thing."""
    try:
        await qmp.execute(command, {"id": ident})
    except QmpCommandError as exc:
        if "not found" in exc.description.lower():
            return False
        raise
    return True


async def _remove_chardev(qmp: QmpClient, name: str) -> bool:
    """chardev-remove; False when QEMU has no such chardev (usb-redir's teardown took it)."""
    return await _remove(qmp, "chardev-remove", chardev_id(name))


async def detach_qmp(qmp: QmpClient, name: str, *, timeout_s: float = DETACH_TIMEOUT_S) -> list[str]:
    done: list[str] = []
    try:
        await qmp.execute("device_del", {"id": name})
    except QmpCommandError as exc:
        if "not found" not in exc.description.lower():
            raise
        if await _remove_chardev(qmp, name):  # a half-finished attach left only the chardev
            return [f"no device {name}; removed its leftover chardev {chardev_id(name)}"]
        raise QmpError(qmp.where, f"no device {name!r} in this VM (QEMU: {exc.description})") from exc
    await qmp.wait_event("DEVICE_DELETED", lambda data: data.get("device") == name, timeout_s)
    done.append(f"device_del {name}: QEMU reports it deleted")
    if await _remove_chardev(qmp, name):
        done.append(f"chardev-remove {chardev_id(name)}")
    if await _remove(qmp, "object-del", tls_id(name)):
        done.append(f"object-del {tls_id(name)}")
    return done


def _virsh(argv: list[str], domain: str, stdin: str | None = None) -> None:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=120)
    except FileNotFoundError as exc:
        raise VirshError(domain, "virsh not found (Debian: apt-get install libvirt-clients)") from exc
    except subprocess.TimeoutExpired as exc:
        raise VirshError(domain, f"{' '.join(argv[:3])} did not finish within 120 s") from exc
    if done.returncode != 0:
        lines = [line.removeprefix("error: ") for line in done.stderr.splitlines() if line.strip()]
        raise VirshError(domain, "; ".join(lines) or f"virsh exited with {done.returncode}")


def _virsh_base(connect: str | None) -> list[str]:
    return ["virsh"] + (["-c", connect] if connect else [])


def device_xml(target: Target, name: str) -> str:
    """The libvirt element `--domain` attaches (its alias ``ua-NAME`` lets detach find it)."""
    if target.kind == "route":
        return redirdev_xml(target.host, target.port, name=name, tls=target.tls_dir is not None)
    if target.usb is not None:
        return usb_hostdev_xml(target.usb, name=name)
    return pci_hostdev_xml(target.address, name=name)


def virsh_attach(domain: str, target: Target, name: str, *, connect: str | None = None) -> list[str]:
    xml = device_xml(target, name)
    _virsh([*_virsh_base(connect), "attach-device", domain, "/dev/stdin", "--live"], domain, xml)
    return [f"virsh attach-device {domain} --live: alias {alias(name)}"]


def virsh_detach(domain: str, name: str, *, connect: str | None = None) -> list[str]:
    _virsh([*_virsh_base(connect), "detach-device-alias", domain, alias(name), "--live"], domain)
    return [f"virsh detach-device-alias {domain} {alias(name)} --live"]
