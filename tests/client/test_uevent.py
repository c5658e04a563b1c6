"""USB hotplug from kernel uevents: the parser on recorded datagrams, the
netlink socket on this host's kernel (a synthetic uevent written to sysfs),
and a client whose inventory follows a device plugged in at once, not on
the next (now 30 s) rescan."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio

from redirgate.client.service import SAFETY_RESCAN_S
from redirgate.client.usb.hotplug import UeventMonitor, UeventUnavailable
from redirgate.client.usb.source import find_devices
from redirgate.client.usb.uevent import Uevent, is_usb_device_event, parse_uevent
from redirgate.client.virtual import LoopbackDevice
from redirgate.proto.tunnel import parse_selector as parse_tunnel_selector
from tests.support.system import require
from tests.support.tunnel_lab import running_lab

# Recorded with a NETLINK_KOBJECT_UEVENT socket in the thin-client VM (Debian's
# 6.1 kernel under QEMU TCG) while a configfs loopback gadget on dummy_hcd was
# plugged (UDC written) and unplugged: the device, its interface, the driver
# binding; and what this host's kernel sent for a synthetic add on /dev/null.
USB_ADD = (
    b"add@/devices/platform/dummy_hcd.0/usb1/1-1\x00ACTION=add\x00DEVPATH=/devices/platform/dummy_hcd.0/usb1/1-1\x00"
    b"SUBSYSTEM=usb\x00MAJOR=189\x00MINOR=1\x00DEVNAME=bus/usb/001/002\x00DEVTYPE=usb_device\x00"
    b"PRODUCT=1209/5e1f/601\x00TYPE=0/0/0\x00BUSNUM=001\x00DEVNUM=002\x00SEQNUM=693\x00"
)
USB_INTERFACE_ADD = (
    b"add@/devices/platform/dummy_hcd.0/usb1/1-1/1-1:1.0\x00ACTION=add\x00"
    b"DEVPATH=/devices/platform/dummy_hcd.0/usb1/1-1/1-1:1.0\x00SUBSYSTEM=usb\x00DEVTYPE=usb_interface\x00"
    b"PRODUCT=1209/5e1f/601\x00TYPE=0/0/0\x00INTERFACE=255/0/0\x00"
    b"MODALIAS=usb:v1209p5E1Fd0601dc00dsc00dp00icFFisc00ip00in00\x00SEQNUM=694\x00"
)
USB_BIND = (
    b"bind@/devices/platform/dummy_hcd.0/usb1/1-1\x00ACTION=bind\x00DEVPATH=/devices/platform/dummy_hcd.0/usb1/1-1\x00"
    b"SUBSYSTEM=usb\x00MAJOR=189\x00MINOR=1\x00DEVNAME=bus/usb/001/002\x00DEVTYPE=usb_device\x00DRIVER=usb\x00"
    b"PRODUCT=1209/5e1f/601\x00TYPE=0/0/0\x00BUSNUM=001\x00DEVNUM=002\x00SEQNUM=695\x00"
)
USB_REMOVE = (
    b"remove@/devices/platform/dummy_hcd.0/usb1/1-1\x00ACTION=remove\x00"
    b"DEVPATH=/devices/platform/dummy_hcd.0/usb1/1-1\x00SUBSYSTEM=usb\x00MAJOR=189\x00MINOR=1\x00"
    b"DEVNAME=bus/usb/001/002\x00DEVTYPE=usb_device\x00PRODUCT=1209/5e1f/601\x00TYPE=0/0/0\x00BUSNUM=001\x00"
    b"DEVNUM=002\x00SEQNUM=701\x00"
)
HOST_MEM_NULL = (
    b"add@/devices/virtual/mem/null\0ACTION=add\0DEVPATH=/devices/virtual/mem/null\0SUBSYSTEM=mem\0SYNTH_UUID=0\0"
    b"MAJOR=1\0MINOR=3\0DEVNAME=null\0DEVMODE=0666\0SEQNUM=834\0"
)


def test_a_usb_device_add_and_remove() -> None:
    added = parse_uevent(USB_ADD)
    assert added is not None and added.action == "add" and added.subsystem == "usb"
    assert added.devpath == "/devices/platform/dummy_hcd.0/usb1/1-1" and added.seqnum == 693
    assert added.env["PRODUCT"] == "1209/5e1f/601" and added.env["BUSNUM"] == "001"
    assert is_usb_device_event(added)
    removed = parse_uevent(USB_REMOVE)
    assert removed is not None and removed.action == "remove" and is_usb_device_event(removed)


def test_interfaces_bindings_and_other_subsystems_are_not_the_inventorys_business() -> None:
    for data in (USB_INTERFACE_ADD, USB_BIND, HOST_MEM_NULL):
        event = parse_uevent(data)
        assert event is not None and not is_usb_device_event(event)
    assert parse_uevent(HOST_MEM_NULL) == Uevent(
        "add",
        "/devices/virtual/mem/null",
        {
            "ACTION": "add",
            "DEVPATH": "/devices/virtual/mem/null",
            "SUBSYSTEM": "mem",
            "SYNTH_UUID": "0",
            "MAJOR": "1",
            "MINOR": "3",
            "DEVNAME": "null",
            "DEVMODE": "0666",
            "SEQNUM": "834",
        },
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"libudev\0\xfe\xed\xca\xfe" + USB_ADD,  # udevd's re-broadcast (group 2)
        b"add /devices/x\0ACTION=add\0",  # no @
        b"explode@/devices/x\0ACTION=explode\0",  # no such action
        b"add@devices/x\0",  # not a path
        b"add@/devices/x\0NOEQUALS\0",
        b"add@/devices/x\0ACTION=remove\0",  # header and body disagree
        b"add@/devices/x\0DEVPATH=/devices/y\0",
        b"add@/devices/\xff\0",  # not UTF-8
        USB_ADD[:-30] + b"\xc3",  # cut in a character
    ],
)
def test_what_is_not_a_kernel_uevent_is_none(data: bytes) -> None:
    assert parse_uevent(data) is None


def _netlink() -> None:
    try:
        UeventMonitor.open().close()
    except UeventUnavailable as exc:
        require("netlink uevents", False, str(exc))


def _writable_uevent() -> Path:
    path = Path("/sys/devices/virtual/mem/null/uevent")
    require("a writable sysfs uevent file (root)", os.access(path, os.W_OK), "to make the kernel send a uevent")
    return path


async def test_the_netlink_socket_hears_the_kernel() -> None:
    """A synthetic uevent (the kernel's own, from sysfs) reaches the monitor,
    tagged with our UUID so other uevents on this host do not count."""
    _netlink()
    path = _writable_uevent()
    tag = str(uuid.uuid4())
    monitor = UeventMonitor.open()
    heard: list[Uevent] = []
    got = trio.Event()

    def on_event(event: Uevent) -> None:
        heard.append(event)
        got.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: monitor.run(on_event, matches=lambda e: e.env.get("SYNTH_UUID") == tag))
            await trio.to_thread.run_sync(path.write_text, f"change {tag} REDIRGATE=test\n")
            await got.wait()
            nursery.cancel_scope.cancel()
    finally:
        monitor.close()
    (event,) = heard
    assert event.action == "change" and event.devpath == "/devices/virtual/mem/null" and event.subsystem == "mem"
    assert event.env["SYNTH_ARG_REDIRGATE"] == "test"
    assert not is_usb_device_event(event)  # the inventory would not have looked


async def test_a_plugged_device_reaches_the_gateway_without_waiting_for_a_rescan(tmp_path: Path) -> None:
    """With uevents the periodic rescan is a 30 s safety net; a device
    plugged in (here on the emulated bus, which announces it as the kernel
    would) is in the gateway's inventory at once."""
    _netlink()
    async with running_lab(tmp_path, [], virtual=["virtual:keyboard"]) as lab:
        client = lab.client
        assert client is not None and client.rescan_interval_s == SAFETY_RESCAN_S == 30
        backend = client.inventory.virtual_backend
        backend.plug(LoopbackDevice())
        selector = parse_tunnel_selector("usb:1209:0003")
        with trio.fail_after(10):  # far below the 30 s rescan: only the plug event can bring it
            _, entry = await lab.gateway.registry.wait_for_device("thin-01", selector)
        assert entry.id == "usb:1209:0003:LOOP0000000001"


async def test_a_kernel_uevent_makes_the_client_look_now_and_once_more(tmp_path: Path, monkeypatch) -> None:
    """The client's own monitor: a matching uevent (here a synthetic one the
    kernel sends for /dev/null, standing in for a USB device: this host has
    no USB) rescans the inventory at once, and again FOLLOWUP_RESCAN_S later."""
    from redirgate.client import service

    _netlink()
    path = _writable_uevent()
    tag = str(uuid.uuid4())
    monkeypatch.setattr(service, "is_usb_device_event", lambda event: event.env.get("SYNTH_UUID") == tag)
    async with running_lab(tmp_path, [], virtual=["virtual:keyboard"]) as lab:
        client = lab.client
        assert client is not None
        scans: list[float] = []
        scanned = trio.Event()
        real_scan = client.inventory.scan

        async def counting_scan(**options):  # type: ignore[no-untyped-def]  # wraps the real scan
            scans.append(trio.current_time())
            if len(scans) >= 2:
                scanned.set()
            return await real_scan(**options)

        client.inventory.scan = counting_scan  # type: ignore[method-assign]  # counts the scans the client starts
        sent = trio.current_time()
        await trio.to_thread.run_sync(path.write_text, f"change {tag}\n")
        with trio.fail_after(20):  # below the 30 s safety net
            await scanned.wait()
    first, second = scans[:2]
    assert first >= sent and second >= sent + service.FOLLOWUP_RESCAN_S  # the follow-up, not a second event


async def test_a_usb_uevent_gives_libusb_a_fresh_device_list_first(monkeypatch) -> None:
    """libusb learns of devices from udevd (or never, without one): on a USB
    uevent the client takes a new libusb context before it looks."""
    from redirgate.client.usb import hotplug, libusb

    _netlink()
    path = _writable_uevent()
    tag = str(uuid.uuid4())
    before = libusb.libusb_backend()
    seen: list[object] = []
    done = trio.Event()

    def on_change() -> None:
        seen.append(libusb.libusb_backend())
        done.set()

    async with trio.open_nursery() as nursery:
        matches = partial(_tagged, tag)
        assert await nursery.start(partial(hotplug.follow_usb_uevents, on_change, matches=matches)) is None
        await trio.to_thread.run_sync(path.write_text, f"change {tag}\n")
        await done.wait()
        nursery.cancel_scope.cancel()
    assert seen[0] is not before and libusb.is_libusb_backend(seen[0])
    assert find_devices() is not None  # the new context enumerates


def _tagged(tag: str, event: Uevent) -> bool:
    return event.env.get("SYNTH_UUID") == tag


async def test_a_printers_state_still_reaches_the_gateway_every_second(tmp_path: Path) -> None:
    """USB rescans wait for uevents (30 s otherwise); the port exports'
    entries (here a printer port coming) are still sent within a second."""
    _netlink()
    port = tmp_path / "lp0"
    extra = f'\n[[parallel]]\nname = "printer"\nport = "{port}"\n'
    async with running_lab(tmp_path, [], virtual=["virtual:keyboard"], client_extra_export=extra) as lab:
        assert lab.client is not None and lab.client.rescan_interval_s == SAFETY_RESCAN_S
        registry = lab.gateway.registry

        def description() -> str | None:
            session = registry.clients.get("thin-01")
            entry = session.inventory.get("parallel:printer") if session is not None else None
            return entry.description if entry is not None else None

        async def until(predicate: Callable[[str | None], bool]) -> None:
            while not predicate(description()):
                await registry._changed.wait()  # set by each inventory update

        with trio.fail_after(10):
            await until(lambda text: (text or "").startswith("printer absent"))
        port.write_bytes(b"")  # the "printer" appears: a file, status unknown
        with trio.fail_after(10):  # far below the 30 s USB rescan
            await until(lambda text: text == "status unknown")


async def test_the_safety_net_rescan_also_refreshes_libusb(tmp_path: Path, monkeypatch) -> None:
    """Where uevents never come (a container's own network namespace), the
    timer's rescan must still see new devices: it takes a new libusb context."""
    from redirgate.client import inventory

    token = trio.lowlevel.current_trio_token()
    refreshed = trio.Event()
    monkeypatch.setattr(inventory, "refresh_libusb", lambda: token.run_sync_soon(refreshed.set))
    async with running_lab(tmp_path, [], virtual=["virtual:keyboard"]) as lab:
        assert lab.client is not None
        assert not refreshed.is_set()  # the first scan, at connect, needs none
        lab.client.rescan_interval_s = 0.2
        with trio.fail_after(10):
            await refreshed.wait()
