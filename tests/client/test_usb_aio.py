"""client/usb/aio.py on this machine's libusb (no USB devices needed): who gets
the asynchronous path, and the event pump's life on the trio loop.

Transfers themselves need a real device: tests/e2e/real_usb runs them (the
mass-storage test asserts the client logged ``transfers: async``)."""

from __future__ import annotations

import pytest
import trio
import usb.backend.libusb1
import usb.core

from redirgate.client.usb import aio
from redirgate.client.usb.device import UsbDevice
from redirgate.client.virtual import LoopbackDevice, VirtualBackend


class _Dev:
    """What libusb_async_for reads of a pyusb device: its backend."""

    def __init__(self, backend: object) -> None:
        self.backend = backend


@pytest.fixture
def libusb_backend() -> usb.backend.libusb1._LibUSB:
    backend = usb.backend.libusb1.get_backend()
    assert backend is not None, "libusb-1.0 is missing (tests/setup-system.sh installs it)"
    return backend


def test_libusb_gets_one_async_engine_per_context(libusb_backend) -> None:
    first = aio.libusb_async_for(_Dev(libusb_backend))  # type: ignore[arg-type]  # a stand-in device
    assert isinstance(first, aio.LibusbAsync)
    assert aio.libusb_async_for(_Dev(libusb_backend)) is first  # type: ignore[arg-type]
    other = type(libusb_backend)(usb.backend.libusb1._lib)  # a fresh context, as client/usb/libusb.py refreshes
    assert aio.libusb_async_for(_Dev(other)) is not first  # type: ignore[arg-type]


async def test_emulated_devices_keep_the_thread_path() -> None:
    backend = VirtualBackend([LoopbackDevice(buffer_bytes=4096)])
    try:
        (dev,) = usb.core.find(backend=backend, find_all=True)
        assert aio.libusb_async_for(dev) is None
        device = await UsbDevice.open(dev)
        try:
            assert device.aio is None
            assert device.transfer_path == "inline"
        finally:
            await device.release()
    finally:
        backend.close()


async def test_one_pump_at_a_time_and_the_next_takes_over(libusb_backend) -> None:
    engine = aio.libusb_async_for(_Dev(libusb_backend))  # type: ignore[arg-type]
    assert engine is not None
    async with trio.open_nursery() as nursery:
        first, second = trio.CancelScope(), trio.CancelScope()

        async def pump(scope: trio.CancelScope) -> None:
            with scope:
                await engine.pump()

        nursery.start_soon(pump, first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(pump, second)  # trio allows one waiter per fd: this one waits its turn
        await trio.testing.wait_all_tasks_blocked()
        assert engine._pumping
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert engine._pumping  # the second took over
        assert engine._fds  # and waits on libusb's fds (its eventfd and timerfd at least)
        second.cancel()
    assert not engine._pumping


def test_a_pollfd_closed_before_it_is_registered_is_skipped_and_synced_again() -> None:
    """libusb can list an fd that a worker thread closes before the pump
    registers it (a channel closing on a real device): that must not end
    `client run` with EBADF; the set stays dirty and is read again later."""
    import ctypes
    import os

    class PollFd(ctypes.Structure):
        _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short)]

    read_end, write_end = os.pipe()
    os.close(write_end)
    closed = os.open(os.devnull, os.O_RDONLY)
    os.close(closed)  # an fd number that no longer names a file
    entries = [PollFd(read_end, 1), PollFd(closed, 1)]
    array = (ctypes.POINTER(PollFd) * 3)(ctypes.pointer(entries[0]), ctypes.pointer(entries[1]), None)

    class FakeLib:
        def libusb_set_pollfd_notifiers(self, *args: object) -> None:
            pass

        def libusb_get_pollfds(self, ctx: object) -> object:
            return array

        def libusb_free_pollfds(self, array: object) -> None:
            pass

    engine = aio.LibusbAsync(FakeLib(), None)
    try:
        engine._sync_fds()
        assert engine._fds == {read_end: 1}
        assert engine._dirty  # read again on the next turn
    finally:
        os.close(read_end)


async def test_a_wake_without_completion_reads_libusbs_fds_again_only_when_they_changed() -> None:
    """The pump wakes when libusb's fds are ready; when another caller reaped the completion first
    (an iso OUT stream asks libusb itself), it handles nothing.  It then waits again without reading
    libusb's pollfds afresh (about ten system calls); only a change libusb announced makes it read
    them (`_dirty`, set by libusb's pollfd notifiers)."""
    import ctypes
    import os

    class PollFd(ctypes.Structure):
        _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short)]

    read_end, write_end = os.pipe()
    entry = PollFd(read_end, 1)
    array = (ctypes.POINTER(PollFd) * 2)(ctypes.pointer(entry), None)

    class FakeLib:
        pollfd_reads = 0
        handled = 0

        def libusb_set_pollfd_notifiers(self, *args: object) -> None:
            pass

        def libusb_get_pollfds(self, ctx: object) -> object:
            self.pollfd_reads += 1
            return array

        def libusb_free_pollfds(self, array: object) -> None:
            pass

        def libusb_handle_events_timeout_completed(self, *args: object) -> int:
            os.read(read_end, 1)  # ready, but no transfer of ours completes
            self.handled += 1
            return 0

    lib = FakeLib()
    engine = aio.LibusbAsync(lib, None)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.pump)
            await trio.testing.wait_all_tasks_blocked()
            assert lib.pollfd_reads == 1
            for n in range(1, 4):
                os.write(write_end, b"x")
                await trio.testing.wait_all_tasks_blocked()
                assert lib.handled == n
            assert lib.pollfd_reads == 1  # not on every empty wake
            engine._dirty = True  # libusb said an fd came or went
            os.write(write_end, b"x")
            await trio.testing.wait_all_tasks_blocked()
            assert (lib.handled, lib.pollfd_reads) == (4, 2)
            nursery.cancel_scope.cancel()
    finally:
        os.close(read_end)
        os.close(write_end)
