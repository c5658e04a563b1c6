"""USB hotplug from the kernel's own events: uevents over netlink, on trio.

`UeventMonitor.open()` binds a NETLINK_KOBJECT_UEVENT socket to the kernel's
group; `run(on_event)` waits for it with `trio.lowlevel.wait_readable`,
reads every datagram that is there, parses each (client/usb/uevent.py) and
calls `on_event` for those `matches` accepts (USB devices coming and going).
Only datagrams from the kernel itself (netlink port 0) count.  Opening fails
where netlink is not allowed (some containers, seccomp): the caller then
falls back to rescanning on a timer, and says so.

Why not pyudev: it needs libudev (udevd's library; a thin client's initramfs
or a container may have neither), drives its socket with its own thread or
an observer API trio would have to wrap, and what we need is one socket and
a 40-line parser we can test with recorded bytes.

`follow_usb_uevents(on_change)` is what the client runs: on each burst of
USB device uevents it refreshes libusb's device list first (libusb learns of
devices from udevd, later than the kernel says, or never where no udevd
runs: client/usb/libusb.py), then calls `on_change`.

Ownership: the socket belongs to the task running `run()`; `close()` after
it has returned (or never started).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import trio

from redirgate.client.usb.libusb import refresh_libusb
from redirgate.client.usb.uevent import MAX_UEVENT_BYTES, Uevent, is_usb_device_event, parse_uevent

__all__ = ["EVENTS_LOST", "NETLINK_KOBJECT_UEVENT", "UeventMonitor", "UeventUnavailable", "follow_usb_uevents"]

log = logging.getLogger(__name__)

#: linux/netlink.h
NETLINK_KOBJECT_UEVENT = 15
#: the kernel's multicast group (udevd re-broadcasts on group 2)
KERNEL_GROUP = 1
#: room for bursts (a hub with many devices plugged at once)
RECEIVE_BUFFER_BYTES = 1 << 20
#: what `read_ready` reports when the kernel dropped uevents (ENOBUFS, a full
#: buffer): some USB device may have changed, look at everything again
EVENTS_LOST = Uevent("change", "/", {"SUBSYSTEM": "usb", "DEVTYPE": "usb_device"})


class UeventUnavailable(OSError):
    """No uevent socket here (no netlink, not allowed); carries the reason."""


class UeventMonitor:
    """A kernel uevent socket (use `UeventMonitor.open()`)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = 0
        self.dropped = 0

    @classmethod
    def open(cls) -> UeventMonitor:
        try:
            sock = socket.socket(
                socket.AF_NETLINK,
                socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                NETLINK_KOBJECT_UEVENT,
            )
        except (OSError, AttributeError) as exc:  # AttributeError: no AF_NETLINK (not Linux)
            raise UeventUnavailable(f"no netlink uevent socket: {exc}") from exc
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            except OSError:
                pass  # the default buffer still works
            sock.bind((0, KERNEL_GROUP))
        except OSError as exc:
            sock.close()
            raise UeventUnavailable(f"cannot join the kernel's uevent group: {exc}") from exc
        return cls(sock)

    def read_ready(self) -> list[Uevent]:
        """Every uevent the socket holds now (never blocks)."""
        events: list[Uevent] = []
        while True:
            try:
                data, address = self.sock.recvfrom(MAX_UEVENT_BYTES * 4)
            except BlockingIOError:
                return events
            except OSError as exc:
                # ENOBUFS: the kernel dropped events for a full buffer; the
                # caller's rescan covers them
                self.dropped += 1
                log.debug("uevent socket: %s", exc)
                events.append(EVENTS_LOST)
                return events
            if address[0] != 0:
                continue  # not from the kernel
            event = parse_uevent(data)
            if event is not None:
                self.received += 1
                events.append(event)

    async def run(
        self, on_event: Callable[[Uevent], None], *, matches: Callable[[Uevent], bool] = is_usb_device_event
    ) -> None:
        """Call `on_event` for each matching uevent, until cancelled."""
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            for event in self.read_ready():
                if matches(event):
                    on_event(event)

    def close(self) -> None:
        self.sock.close()


async def follow_usb_uevents(
    on_change: Callable[[], None],
    *,
    matches: Callable[[Uevent], bool] = is_usb_device_event,
    task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Until cancelled: after each burst of matching uevents, a fresh libusb
    device list, then `on_change()`.  Reports started(None) when following
    the kernel's uevents, or started(reason) and returns where it cannot."""
    try:
        monitor = UeventMonitor.open()
    except UeventUnavailable as exc:
        task_status.started(str(exc))
        return
    try:
        task_status.started(None)
        while True:
            await trio.lowlevel.wait_readable(monitor.sock)
            if any(matches(event) for event in monitor.read_ready()):
                await trio.to_thread.run_sync(refresh_libusb)
                on_change()
    finally:
        monitor.close()
