"""VirtualBackend as pyusb sees it: enumeration, descriptors, standard
requests, libusb's claim rules, timeouts, hotplug and threads."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import usb.control
import usb.core
import usb.util

from redirgate.client.virtual import (
    KeyboardDevice,
    LoopbackDevice,
    MassStorageDevice,
    VirtualBackend,
    VirtualSpecError,
    make_backend,
    parse_virtual_spec,
)
from redirgate.client.virtual.descriptors import (
    DescriptorError,
    bos_usb2_extension,
    parse_configuration,
    parse_device_descriptor,
)

JOIN_S = 10


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(64 * 512))
    return path


@pytest.fixture
def backend(image: Path) -> Iterator[VirtualBackend]:
    b = make_backend([f"virtual:storage:{image}", "virtual:keyboard", "virtual:loopback"])
    yield b
    b.close()


def _find(backend: VirtualBackend, pid: int) -> usb.core.Device:
    dev = usb.core.find(backend=backend, idVendor=0x1209, idProduct=pid)
    assert dev is not None
    return dev


def _run(target, *args) -> tuple[threading.Thread, list[object]]:  # type: ignore[no-untyped-def]  # any target and its arguments
    out: list[object] = []

    def body() -> None:
        try:
            out.append(target(*args))
        except usb.core.USBError as exc:
            out.append(exc)

    t = threading.Thread(target=body)
    t.start()
    return t, out


def test_enumeration_and_raw_descriptors_match(backend: VirtualBackend) -> None:
    devs = list(usb.core.find(backend=backend, find_all=True))
    assert [d.idProduct for d in devs] == [1, 2, 3]
    assert len({d.address for d in devs}) == 3 and all(d.bus == 254 for d in devs)
    for dev, vdev in zip(devs, backend.devices, strict=True):
        raw = bytes(usb.control.get_descriptor(dev, 18, usb.util.DESC_TYPE_DEVICE, 0))
        assert raw == vdev.descriptors.device
        assert parse_device_descriptor(raw).idProduct == dev.idProduct
        head = bytes(usb.control.get_descriptor(dev, 9, usb.util.DESC_TYPE_CONFIG, 0))
        total = int.from_bytes(head[2:4], "little")
        raw_cfg = bytes(usb.control.get_descriptor(dev, total, usb.util.DESC_TYPE_CONFIG, 0))
        assert raw_cfg == vdev.descriptors.configurations[0]
        assert parse_configuration(raw_cfg).wTotalLength == dev[0].wTotalLength == total
        assert dev.langids == (0x0409,)
        assert dev.manufacturer == "redirgate"
        assert len(dev.serial_number) >= 12


def test_standard_requests(backend: VirtualBackend) -> None:
    dev = _find(backend, 3)
    assert bytes(dev.ctrl_transfer(0x80, 8, 0, 0, 1)) == b"\x00"  # unconfigured
    dev.set_configuration()
    assert bytes(dev.ctrl_transfer(0x80, 8, 0, 0, 1)) == b"\x01"
    assert bytes(dev.ctrl_transfer(0x80, 0, 0, 0, 2)) == b"\x00\x00"  # GET_STATUS device
    dev.ctrl_transfer(0x02, 3, 0, 0x81, None)  # SET_FEATURE(ENDPOINT_HALT)
    assert bytes(dev.ctrl_transfer(0x82, 0, 0, 0x81, 2)) == b"\x01\x00"
    with pytest.raises(usb.core.USBError) as info:
        dev.read(0x81, 512, 100)
    assert info.value.errno == errno.EPIPE and info.value.backend_error_code == -9
    dev.clear_halt(0x81)
    assert bytes(dev.ctrl_transfer(0x82, 0, 0, 0x81, 2)) == b"\x00\x00"
    assert bytes(dev.ctrl_transfer(0x81, 10, 0, 1, 1)) == b"\x00"  # GET_INTERFACE
    with pytest.raises(usb.core.USBError):
        dev.ctrl_transfer(0x80, 6, 0x0300 | 99, 0x0409, 255)  # no such string
    with pytest.raises(usb.core.USBError):
        dev.ctrl_transfer(0x80, 6, 0x0F00, 0, 5)  # no BOS on a USB 2.0 device
    assert dev.get_active_configuration().bConfigurationValue == 1


def test_libusb_claim_rules(backend: VirtualBackend) -> None:
    dev = _find(backend, 3)
    dev.set_configuration()
    usb.util.claim_interface(dev, 0)
    with pytest.raises(usb.core.USBError) as info:
        dev.set_configuration()
    assert info.value.errno == errno.EBUSY
    # A second handle on the same device cannot claim the interface.
    other = backend.open_device(backend.enumerate_devices()[2])
    with pytest.raises(usb.core.USBError) as info:
        backend.claim_interface(other, 0)
    assert info.value.errno == errno.EBUSY
    with pytest.raises(usb.core.USBError) as info:
        backend.set_interface_altsetting(other, 1, 1)
    assert info.value.errno == errno.ENOENT
    backend.close_device(other)
    dev.set_interface_altsetting(1, 1)
    vdev = backend.devices[2]
    assert vdev.alternate_setting(1) == 1
    usb.util.release_interface(dev, 1)
    assert vdev.alternate_setting(1) == 0  # release puts alternate 0 back
    usb.util.release_interface(dev, 0)
    dev.set_configuration()
    assert backend.is_kernel_driver_active(dev._ctx.handle, 0) is False
    with pytest.raises(usb.core.USBError) as info:
        dev.detach_kernel_driver(0)  # no driver there: libusb says NOT_FOUND
    assert info.value.errno == errno.ENOENT


def test_kernel_drivers_follow_libusb_rules(backend: VirtualBackend) -> None:
    dev, vdev = _find(backend, 3), backend.devices[2]
    dev.set_configuration()
    backend.bind_kernel_driver(vdev, [0])
    assert dev.is_kernel_driver_active(0) and not dev.is_kernel_driver_active(1)
    with pytest.raises(usb.core.USBError) as info:
        usb.util.claim_interface(dev, 0)  # the driver holds it
    assert info.value.errno == errno.EBUSY
    dev.detach_kernel_driver(0)
    usb.util.claim_interface(dev, 0)
    with pytest.raises(usb.core.USBError) as info:
        dev.attach_kernel_driver(0)  # claimed: the driver cannot take it back
    assert info.value.errno == errno.EBUSY
    usb.util.release_interface(dev, 0)
    dev.attach_kernel_driver(0)
    assert backend.kernel_driver_bound(vdev, 0)
    name = vdev.name
    assert backend.driver_calls == [("detach", name, 0), ("attach", name, 0), ("attach", name, 0)]
    backend.bind_kernel_driver(vdev, [1], detachable=False)
    with pytest.raises(usb.core.USBError) as info:
        dev.detach_kernel_driver(1)
    assert info.value.errno == errno.EACCES and backend.kernel_driver_bound(vdev, 1)
    # unplugged and plugged again: the kernel binds its drivers anew
    dev.detach_kernel_driver(0)
    backend.unplug(vdev)
    backend.plug(vdev)
    assert backend.kernel_driver_bound(vdev, 0)


def test_blocked_interrupt_read_does_not_block_bulk(backend: VirtualBackend) -> None:
    kbd_dev, loop_dev = _find(backend, 2), _find(backend, 3)
    kbd_dev.set_configuration()
    loop_dev.set_configuration()
    # Two reads that wait forever (timeout 0, as in libusb) until the end of the test.
    blocked, result = _run(kbd_dev.read, 0x81, 8, 0)
    loop_blocked, loop_result = _run(loop_dev.read, 0x83, 64, 0)  # same device as the bulk below
    # Lets both reads reach their wait.  No event says a thread waits inside the
    # device; one that has not yet makes the loop below prove less, never fail.
    time.sleep(0.05)
    for i in range(50):  # a bulk transfer queued behind a blocked read would wait forever: its timeout fails it
        loop_dev.write(0x01, bytes([i]) * 100, 10_000)
        assert bytes(loop_dev.read(0x81, 512, 10_000)) == bytes([i]) * 100
    assert blocked.is_alive() and loop_blocked.is_alive()
    backend.devices[1].type_text("x")
    loop_dev.write(0x03, b"ping", 1000)
    blocked.join(JOIN_S)
    loop_blocked.join(JOIN_S)
    assert bytes(result[0]) == bytes([0, 0, 0x1B, 0, 0, 0, 0, 0])  # type: ignore[arg-type]  # the thread's result: bytes
    assert bytes(loop_result[0]) == b"ping"  # type: ignore[arg-type]  # the thread's result: bytes


def test_many_threads_echo_concurrently(backend: VirtualBackend) -> None:
    dev = _find(backend, 3)
    dev.set_configuration()
    vdev = backend.devices[2]
    payload = bytes(range(256)) * 4
    n = 8 * 20

    def writer() -> int:
        for _ in range(20):
            dev.write(0x01, payload, 2000)
        return 20

    lock = threading.Lock()
    total = [0]

    def reader() -> int:
        got = 0
        while True:
            with lock:
                if total[0] >= n * len(payload):
                    return got
            try:
                chunk = len(dev.read(0x81, 1 << 16, 100))
            except usb.core.USBTimeoutError:
                continue
            got += chunk
            with lock:
                total[0] += chunk

    threads = [_run(writer) for _ in range(8)] + [_run(reader) for _ in range(4)]
    for t, _ in threads:
        t.join(JOIN_S)
    assert all(not t.is_alive() for t, _ in threads)
    assert [r[0] for _, r in threads[:8]] == [20] * 8
    assert sum(r[0] for _, r in threads[8:]) == n * len(payload)  # type: ignore[misc]  # the threads' results: ints
    assert vdev.stats().bulk_in_bytes == n * len(payload)


def test_timeout_is_honoured(backend: VirtualBackend) -> None:
    dev = _find(backend, 2)
    dev.set_configuration()
    start = time.monotonic()
    reader, result = _run(dev.read, 0x81, 8, 200)
    reader.join(JOIN_S)  # a safety net: a read that ignored its timeout would never end
    elapsed = time.monotonic() - start
    assert not reader.is_alive()
    assert elapsed >= 0.19  # not before its 200 ms (how much later depends on the load)
    (exc,) = result
    assert isinstance(exc, usb.core.USBTimeoutError)
    assert exc.errno == errno.ETIMEDOUT and exc.backend_error_code == -7


def test_unplug_wakes_blocked_reads_with_no_device(backend: VirtualBackend) -> None:
    kbd = backend.devices[1]
    dev = _find(backend, 2)
    dev.set_configuration()
    t, result = _run(dev.read, 0x81, 8, 0)  # timeout 0: wait forever, as in libusb
    # Lets the read reach its wait (no event says it did); one that starts after
    # the unplug gets the same ENODEV, so this only makes the test prove more.
    time.sleep(0.05)
    backend.unplug(kbd)
    t.join(JOIN_S)
    assert not t.is_alive()
    (exc,) = result
    assert isinstance(exc, usb.core.USBError) and not isinstance(exc, usb.core.USBTimeoutError)
    assert exc.errno == errno.ENODEV and exc.backend_error_code == -4
    with pytest.raises(usb.core.USBError) as info:
        dev.ctrl_transfer(0x80, 6, 0x0100, 0, 18)
    assert info.value.errno == errno.ENODEV
    assert [d.idProduct for d in usb.core.find(backend=backend, find_all=True)] == [1, 3]
    usb.util.dispose_resources(dev)  # must not raise after unplug
    # Plug it back: a new address; the old Device stays dead, a new one works.
    backend.plug(kbd)
    with pytest.raises(usb.core.USBError):
        dev.ctrl_transfer(0x80, 6, 0x0100, 0, 18)
    new = _find(backend, 2)
    assert new.address != dev.address
    new.set_configuration()
    kbd.type_text("z")
    assert bytes(new.read(0x81, 8, 1000))[2] == 0x1D


def test_specs() -> None:
    kbd = parse_virtual_spec("virtual:keyboard")
    assert isinstance(kbd, KeyboardDevice)
    loop = parse_virtual_spec("virtual:loopback@full")
    assert isinstance(loop, LoopbackDevice) and loop.speed.name == "FULL"
    for bad in (
        "keyboard",
        "virtual:mouse",
        "virtual:storage",
        "virtual:keyboard:x",
        "virtual:loopback@fast",
        "virtual:loopback@ro",
        "virtual:storage:/nonexistent/x.img",
    ):
        with pytest.raises(VirtualSpecError) as info:
            parse_virtual_spec(bad)
        assert info.value.spec == bad


def test_storage_spec_with_options(image: Path) -> None:
    dev = parse_virtual_spec(f"virtual:storage@full,ro:{image}")
    try:
        assert isinstance(dev, MassStorageDevice)
        assert dev.speed.name == "FULL" and dev.disk.read_only
    finally:
        dev.close()


def test_bos_and_descriptor_errors() -> None:
    bos = bos_usb2_extension(lpm=True)
    assert bos[:5] == bytes([5, 0x0F, 12, 0, 1]) and bos[5:8] == bytes([7, 0x10, 2])
    with pytest.raises(DescriptorError):
        parse_configuration(bytes([9, 2, 20, 0, 1, 1, 0, 0x80, 50]))  # wTotalLength lies
    with pytest.raises(DescriptorError):
        parse_device_descriptor(bytes(18))
