"""Never harm the thin client: hubs and the boot device are never exported,
a kernel driver that will not let go refuses the device, and kernel drivers
come back on every way out of the host engine (emulated devices whose
backend plays the kernel's drivers, client/virtual/backend.py)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
import usb.core

from redirgate.client.config import ExportPolicy
from redirgate.client.inventory import DeviceInventory
from redirgate.client.usb.descriptors import snapshot
from redirgate.client.usb.device import UsbDevice
from redirgate.client.usb.engine import HostEngine
from redirgate.client.usb.errors import DeviceRefusedError, DriverNotDetachedError
from redirgate.client.usb.safety import boot_usb_ports, is_hub, refusal
from redirgate.client.usb.selector import parse_selector
from redirgate.client.usb.source import SelectorSource
from redirgate.client.virtual import HubDevice, KeyboardDevice, LoopbackDevice, Setup, VirtualBackend
from redirgate.vmside.guest import GuestError, UsbredirGuest

NO_BOOT: dict[str, str] = {}


@pytest.fixture
def bus() -> Iterator[tuple[VirtualBackend, HubDevice, KeyboardDevice]]:
    hub, keyboard = HubDevice(), KeyboardDevice()
    backend = VirtualBackend([hub, keyboard])
    yield backend, hub, keyboard
    backend.close()


def _dev(backend: VirtualBackend, vendor_id: int) -> usb.core.Device:
    dev = usb.core.find(backend=backend, idVendor=vendor_id)
    assert dev is not None
    return dev


# ------------------------------------------------------------------ hubs


def test_a_hub_is_refused_whatever_names_it(bus) -> None:
    backend, _, _ = bus
    hub = _dev(backend, 0x1D6B)
    snap = snapshot(hub)
    assert is_hub(snap) and "USB hub" in (refusal(snap, NO_BOOT) or "")
    for text in ("1d6b:0002", f"{snap.port_path}", f"{snap.bus}/{snap.address}", "usb:1d6b:0002"):
        source = SelectorSource(parse_selector(text), backend=backend, boot_ports=dict)
        assert source.look()[0] is None, text
        with pytest.raises(DeviceRefusedError) as info:
            source.check_blocking()
        assert "Virtual Hub" in str(info.value) and "USB hub" in info.value.reason
    # the keyboard beside it is served as before
    assert SelectorSource(parse_selector("1209:0002"), backend=backend, boot_ports=dict).check_blocking()


def test_a_hub_interface_is_a_hub_too(bus) -> None:
    backend, _, _ = bus
    snap = snapshot(_dev(backend, 0x1D6B))
    assert is_hub(dataclasses.replace(snap, device_class=0))  # class 0, hub interface
    assert not is_hub(snapshot(_dev(backend, 0x1209)))


async def test_acquire_never_opens_a_hub_and_says_why_once(bus, caplog) -> None:
    backend, _, _ = bus
    source = SelectorSource(parse_selector("1d6b:0002"), backend=backend, poll_interval_s=0.01, boot_ports=dict)
    with caplog.at_level(logging.WARNING):
        with trio.move_on_after(0.3):
            await source.acquire()
            raise AssertionError("a hub was opened")
    lines = [r.getMessage() for r in caplog.records if "not serving" in r.getMessage()]
    assert len(lines) == 1 and "Virtual Hub" in lines[0] and "USB hub" in lines[0]
    assert backend.driver_calls == []


def test_the_inventory_leaves_hubs_out_even_when_the_policy_allows_them(bus, caplog) -> None:
    backend, _, _ = bus
    inventory = DeviceInventory(ExportPolicy(), backend, boot_ports=dict)
    with caplog.at_level(logging.WARNING):
        first = inventory.scan_blocking()
        second = inventory.scan_blocking()
    assert sorted(first) == sorted(second) == ["usb:1209:0002:KBD0000000001"]
    warned = [r.getMessage() for r in caplog.records if "not exporting" in r.getMessage()]
    assert len(warned) == 1 and "USB hub" in warned[0]  # once, not on every rescan


# ------------------------------------------------------------------ the boot device


def test_the_boot_device_is_refused_by_name(bus) -> None:
    backend, _, _ = bus
    port = snapshot(_dev(backend, 0x1209)).port_path
    boot = {port: "/"}
    source = SelectorSource(parse_selector("1209:0002"), backend=backend, boot_ports=lambda: boot)
    with pytest.raises(DeviceRefusedError) as info:
        source.check_blocking()
    assert "Virtual Keyboard" in str(info.value) and "boots from it (it holds /)" in info.value.reason
    assert DeviceInventory(ExportPolicy(), backend, boot_ports=lambda: boot).scan_blocking() == {}


def _link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def _fake_system(tmp: Path, mountinfo: str) -> tuple[Path, Path]:
    proc, sys_root = tmp / "proc", tmp / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    return proc, sys_root


USB_DISK = "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1.4/2-1.4:1.0/host0/target0:0:0/0:0:0:0/block/sda"


def test_boot_devices_from_mountinfo_and_sysfs(tmp_path: Path) -> None:
    """/ on a USB stick's partition, /boot on a NVMe disk, /home on another
    USB stick: the stick behind / and the hub above it, nothing else."""
    proc, sys_root = _fake_system(
        tmp_path,
        "21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "22 21 259:1 / /boot rw - vfat /dev/nvme0n1p1 rw\n"
        "23 21 8:17 / /home rw - ext4 /dev/sdb1 rw\n"
        "24 21 0:22 / /sys rw - sysfs sysfs rw\n",
    )
    _link(sys_root / "dev/block/8:1", sys_root / USB_DISK / "sda1")
    _link(sys_root / "dev/block/259:1", sys_root / "devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1/nvme0n1p1")
    _link(
        sys_root / "dev/block/8:17", sys_root / "devices/pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.0/host1/block/sdb/sdb1"
    )
    found = boot_usb_ports(proc_root=proc, sys_root=sys_root)
    assert found == {"2-0": "/", "2-1": "/", "2-1.4": "/"}


def test_boot_devices_behind_device_mapper_and_a_live_overlay(tmp_path: Path) -> None:
    """A live system: / is an overlay whose lower dir is a squashfs on a
    loop device whose file lives on the USB stick; /boot is LVM on it."""
    proc, sys_root = _fake_system(
        tmp_path,
        "30 1 0:40 / / rw - overlay overlay rw,lowerdir=/run/live/rootfs/fs.squashfs,upperdir=/run/live/cow/rw\n"
        "31 30 7:0 / /run/live/rootfs/fs.squashfs ro - squashfs /dev/loop0 ro\n"
        "32 30 8:1 / /run/live/medium ro - iso9660 /dev/sda1 ro\n"
        "33 30 0:41 / /run/live/cow rw - tmpfs tmpfs rw\n"
        "34 30 253:0 / /boot rw - ext4 /dev/mapper/vg-boot rw\n",
    )
    _link(sys_root / "dev/block/8:1", sys_root / USB_DISK / "sda1")
    loop = sys_root / "devices/virtual/block/loop0"
    _link(sys_root / "dev/block/7:0", loop)
    (loop / "loop").mkdir()
    (loop / "loop" / "backing_file").write_text("/run/live/medium/live/filesystem.squashfs\n")
    dm = sys_root / "devices/virtual/block/dm-0"
    _link(sys_root / "dev/block/253:0", dm)
    slave = sys_root / USB_DISK / "sda2"
    slave.mkdir(parents=True)
    (slave / "dev").write_text("8:2\n")
    _link(dm / "slaves" / "sda2", slave)
    _link(sys_root / "dev/block/8:2", slave)
    found = boot_usb_ports(proc_root=proc, sys_root=sys_root)
    assert found == {"2-0": "/", "2-1": "/", "2-1.4": "/"}  # / first; /boot is the same stick
    assert boot_usb_ports(["/boot"], proc_root=proc, sys_root=sys_root) == {
        "2-0": "/boot",
        "2-1": "/boot",
        "2-1.4": "/boot",
    }


def test_this_machine_boots_from_no_usb_device() -> None:
    """The development and CI machines have no USB at all."""
    assert boot_usb_ports() == {}


# ------------------------------------------------------------------ kernel drivers


@pytest.fixture
def loopback() -> Iterator[tuple[VirtualBackend, LoopbackDevice, usb.core.Device]]:
    device = LoopbackDevice()
    backend = VirtualBackend([device])
    dev = _dev(backend, 0x1209)
    dev.set_configuration(1)  # as Linux leaves an enumerated device
    yield backend, device, dev
    backend.close()


async def test_a_driver_that_will_not_let_go_refuses_the_device_and_restores_the_others(loopback) -> None:
    backend, device, dev = loopback
    backend.bind_kernel_driver(device, [0])
    backend.bind_kernel_driver(device, [1], detachable=False)
    with pytest.raises(DriverNotDetachedError) as info:
        await UsbDevice.open(dev)
    assert "interface 1" in info.value.reason and "cannot be detached" in info.value.reason
    name = device.name
    assert backend.driver_calls == [("detach", name, 0), ("detach", name, 1), ("attach", name, 0)]
    assert backend.kernel_driver_bound(device, 0) and backend.kernel_driver_bound(device, 1)


async def test_acquire_refuses_a_device_whose_driver_will_not_let_go(loopback, caplog) -> None:
    backend, device, _ = loopback
    backend.bind_kernel_driver(device, [0], detachable=False)
    source = SelectorSource(parse_selector("1209:0003"), backend=backend, poll_interval_s=0.01, boot_ports=dict)
    with caplog.at_level(logging.WARNING):
        with trio.move_on_after(0.3):
            await source.acquire()
            raise AssertionError("opened a device whose driver holds it")
    assert [c[0] for c in backend.driver_calls] == ["detach"]  # tried once, not every poll
    lines = [r.getMessage() for r in caplog.records if "not serving" in r.getMessage()]
    assert len(lines) == 1 and "cannot be detached" in lines[0] and "Virtual Loopback" in lines[0]


class CrashingLoopback(LoopbackDevice):
    """A loopback device whose vendor request 0x42 hits a bug (a stand-in
    for any unexpected exception on the engine's path)."""

    def handle_control(self, setup: Setup, data: bytes) -> bytes | None:
        if setup.request == 0x42:
            raise RuntimeError("a bug on the engine's path")
        return super().handle_control(setup, data)


async def _serve_until(engine: HostEngine, guest_end: trio.abc.Stream, after_device) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        async with UsbredirGuest(guest_end, peer="test guest") as guest:
            await guest.wait_device()
            await after_device(guest, nursery)


def _engine_with_drivers() -> tuple[VirtualBackend, LoopbackDevice, HostEngine, trio.abc.Stream]:
    device = CrashingLoopback()
    backend = VirtualBackend([device])
    _dev(backend, 0x1209).set_configuration(1)
    backend.bind_kernel_driver(device, [0, 1])
    source = SelectorSource(parse_selector("virtual:loopback"), backend=backend, poll_interval_s=0.01, boot_ports=dict)
    host_end, guest_end = trio.testing.memory_stream_pair()
    return backend, device, HostEngine(host_end, source, peer="test"), guest_end


def _assert_drivers_back(backend: VirtualBackend, device: LoopbackDevice) -> None:
    name = device.name
    assert ("detach", name, 0) in backend.driver_calls and ("detach", name, 1) in backend.driver_calls
    assert backend.driver_calls[-2:] == [("attach", name, 0), ("attach", name, 1)]
    assert backend.kernel_driver_bound(device, 0) and backend.kernel_driver_bound(device, 1)


async def test_kernel_drivers_come_back_when_the_engine_crashes() -> None:
    backend, device, engine, guest_end = _engine_with_drivers()

    async def crash(guest: UsbredirGuest, nursery: trio.Nursery) -> None:
        assert not backend.kernel_driver_bound(device, 0)  # detached while served
        with pytest.raises(GuestError):
            await guest.control(0x40, 0x42, 0, 0, 0)

    try:
        with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="a bug"), flatten_subgroups=True):
            await _serve_until(engine, guest_end, crash)
        _assert_drivers_back(backend, device)
    finally:
        backend.close()


async def test_kernel_drivers_come_back_when_the_engine_is_cancelled() -> None:
    """SIGTERM reaches the engine as a cancellation (cli/signals.py)."""
    backend, device, engine, guest_end = _engine_with_drivers()

    async def stop(guest: UsbredirGuest, nursery: trio.Nursery) -> None:
        assert not backend.kernel_driver_bound(device, 1)
        nursery.cancel_scope.cancel()

    try:
        await _serve_until(engine, guest_end, stop)
        _assert_drivers_back(backend, device)
    finally:
        backend.close()


async def test_kernel_drivers_come_back_when_the_vm_goes_away() -> None:
    backend, device, engine, guest_end = _engine_with_drivers()

    async def leave(guest: UsbredirGuest, nursery: trio.Nursery) -> None:
        await guest_end.aclose()  # the engine sees the end and returns: _serve_until waits for it

    try:
        await _serve_until(engine, guest_end, leave)
        _assert_drivers_back(backend, device)
    finally:
        backend.close()
