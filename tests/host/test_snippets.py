"""`host xml`: the libvirt elements pass libvirt's own RNG schema, the QEMU arguments a real QEMU."""

from __future__ import annotations

import json
import os
import subprocess
import termios
from pathlib import Path

import pytest
import trio

from redirgate.host.qmp import open_qmp
from redirgate.host.snippets import (
    parallel_qemu,
    parallel_xml,
    parse_usb_selector,
    pci_hostdev_xml,
    pci_qemu,
    redirdev_xml,
    serial_qemu,
    serial_xml,
    usb_hostdev_xml,
    usb_qemu,
)
from tests.support.bare_qemu import bare_qemu, qemu_rejects
from tests.support.fake_host import FakeHost
from tests.support.system import require, require_system

SCHEMAS = Path("/usr/share/libvirt/schemas/domain.rng")


def _validate(tmp_path: Path, device: str) -> subprocess.CompletedProcess[str]:
    """virt-xml-validate on a minimal q35 domain holding ``device`` (what `virsh attach-device` checks it as)."""
    validate = require_system("virt-xml-validate")
    require("libvirt's RNG schemas", SCHEMAS.is_file(), f"{SCHEMAS} missing (Debian: libvirt0)")
    require_system("xmllint")
    domain = (
        "<domain type='kvm'>\n  <name>redirgate-test</name>\n  <memory unit='MiB'>256</memory>\n"
        "  <os><type arch='x86_64' machine='q35'>hvm</type></os>\n  <devices>\n"
        f"{device}  </devices>\n</domain>\n"
    )
    path = tmp_path / "domain.xml"
    path.write_text(domain)
    return subprocess.run([validate, str(path), "domain"], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.system
@pytest.mark.parametrize(
    "element",
    [
        pci_hostdev_xml("0000:01:00.0"),
        pci_hostdev_xml("0000:ab:1f.7", name="nic0"),
        usb_hostdev_xml(parse_usb_selector("046d:c52b")),
        usb_hostdev_xml(parse_usb_selector("3/12"), name="stick"),
        serial_xml("/dev/ttyUSB0"),
        serial_xml("/dev/serial/by-id/usb-FTDI_FT232R-if00-port0"),
        parallel_xml("/dev/parport0"),
        redirdev_xml("gw.example", 17100, name="rg-redir-17100"),
        redirdev_xml("gw.example", 17100, tls=True),
    ],
    ids=["pci", "pci-alias", "usb-id", "usb-bus", "serial", "serial-by-id", "parallel", "redirdev", "redirdev-tls"],
)
def test_xml_passes_libvirt_s_schema(tmp_path: Path, element: str) -> None:
    done = _validate(tmp_path, element)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validates" in done.stdout + done.stderr


@pytest.mark.system
def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    """The validator is not vacuous: a PCI slot and a USB vendor id that are not numbers fail."""
    bad = pci_hostdev_xml("0000:01:00.0").replace("slot='0x00'", "slot='zz'")
    assert _validate(tmp_path, bad).returncode != 0
    usb = usb_hostdev_xml(parse_usb_selector("046d:c52b")).replace("0x046d", "logitech")
    assert _validate(tmp_path, usb).returncode != 0


def test_xml_cli(machine: FakeHost, host_cli) -> None:
    ran = host_cli(machine, "xml", "pci", "03:01.0")
    assert ran.rc == 0 and ran.out == pci_hostdev_xml("0000:03:01.0")
    assert "IOMMU group 7 also holds 0000:03:02.0" in ran.err  # the bridge is not named
    assert "redirgate host vfio bind 0000:03:01.0" in ran.err
    ran = host_cli(machine, "xml", "pci", "0000:01:00.0", "--qemu", "--id", "nic0")
    assert ran.out == (
        "-device pcie-root-port,id=rg-rp1,chassis=1,slot=1 \\\n-device vfio-pci,host=0000:01:00.0,bus=rg-rp1,id=nic0\n"
    )
    assert host_cli(machine, "xml", "usb", "046D:C52B", "--qemu").out == (
        "-device qemu-xhci,id=xhci \\\n-device usb-host,vendorid=0x046d,productid=0xc52b,bus=xhci.0\n"
    )
    assert host_cli(machine, "xml", "usb", "1/4").out == usb_hostdev_xml(parse_usb_selector("1/4"))
    assert host_cli(machine, "xml", "parallel", "/dev/parport0", "--qemu").out == "-parallel /dev/parport0\n"
    assert host_cli(machine, "xml", "serial", "/dev/ttyS1", "--qemu").out == "-serial /dev/ttyS1\n"
    for args, message in [
        (("xml", "usb", "logitech"), "not a USB device: give VID:PID"),
        (("xml", "serial", "ttyS0"), "give the port's absolute path"),
        (("xml", "pci", "0000:09:00.0"), "no such PCI device"),
    ]:
        ran = host_cli(machine, *args)
        assert ran.rc == 1 and message in ran.err and len(ran.err.splitlines()) == 1


@pytest.mark.system
def test_qemu_takes_the_usb_and_serial_arguments(tmp_path: Path) -> None:
    """A real q35 QEMU starts with them: the usb-host device exists and the serial chardev is the host tty."""
    leader, follower = os.openpty()
    try:
        tty = os.ttyname(follower)
        assert termios.tcgetattr(follower)[3] & termios.ICANON
        usb = usb_qemu(parse_usb_selector("046d:c52b"), name="pass0")
        with bare_qemu(tmp_path, [*usb, *serial_qemu(tty)]) as qmp:

            async def ask() -> tuple[list[str], list[dict[str, str]], object]:
                async with open_qmp(str(qmp)) as client:
                    peripherals = [p["name"] for p in await client.execute("qom-list", {"path": "/machine/peripheral"})]
                    chardevs = await client.execute("query-chardev")
                    vendor = await client.execute(
                        "qom-get", {"path": "/machine/peripheral/pass0", "property": "vendorid"}
                    )
                    return peripherals, chardevs, vendor

            peripherals, chardevs, vendor = trio.run(ask)
            raw = not termios.tcgetattr(follower)[3] & termios.ICANON  # QEMU's tty backend made it raw
    finally:
        os.close(leader)
        os.close(follower)
    assert {"xhci", "pass0"} <= set(peripherals)
    assert vendor == 0x046D
    assert {"label": "serial0", "filename": "serial", "frontend-open": True} in chardevs, json.dumps(chardevs)
    assert raw, f"QEMU did not open {tty} as its serial backend"


@pytest.mark.system
def test_qemu_parses_the_pci_and_parallel_arguments(tmp_path: Path) -> None:
    """No such host device here: QEMU gets as far as looking for it, so the syntax is right.

    (usb-host by vendor/product waits for its device; by bus/address it must exist at start.)
    """
    assert "vfio /sys/bus/pci/devices/0000:01:00.0: no such host device" in qemu_rejects(pci_qemu("0000:01:00.0"))
    assert "Could not open '/dev/parport0'" in qemu_rejects(parallel_qemu("/dev/parport0"))
    by_bus = usb_qemu(parse_usb_selector("1/4"))
    assert "failed to find host usb device 1:4" in qemu_rejects(by_bus)
