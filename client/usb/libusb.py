"""The libusb context the client finds real devices with, and its refresh.

Debian's libusb keeps its device list up to date from udevd's broadcasts,
not from the kernel: where no udevd runs (a minimal thin client, the test
harness's thin-client VM) the list is frozen at the first call and a device
plugged in later is never seen; where udevd runs, the list catches up only
after udevd has run its rules, later than the kernel's own uevent.  So
the client keeps one pyusb libusb backend of its own (`libusb_backend()`)
and `refresh_libusb()` replaces it with a fresh context (a new
libusb_init, which enumerates sysfs) when a kernel uevent says a USB device
came or went (client/usb/hotplug.py).  Devices found in an older context
stay usable: each holds its own backend.

Retiring a context: pyusb ends a context (libusb_exit) when its backend
object is finalized, and a device's resource manager drops its backend
*before* its libusb_device (attribute order in pyusb's _ResourceManager).
So when the last device of a replaced context went away, libusb_exit ran
first and libusb_unref_device then touched the freed context: the client
died in a segfault, its log ending in libusb's "destroy device" (issue 12,
seen in the real-USB lab after a device was unplugged and another plugged).
The contexts made here (`_RetiringLibUSB`) therefore never end themselves:
their finalizer queues the context, and the next refresh (a later call, when
every object that held one of its devices is gone) calls libusb_exit.

Thread safety: the backend is swapped with one assignment; callers read it
once per enumeration.  The queue of contexts to end is a deque (appends from
any thread's finalizer, pops under `_lock`).
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import usb.backend.libusb1
import usb.core

__all__ = ["is_libusb_backend", "libusb_backend", "refresh_libusb"]

_lock = threading.Lock()
_current: Any = None
#: Contexts whose backend was finalized, waiting for libusb_exit (see the module docstring).
_to_exit: collections.deque[Any] = collections.deque()


class _RetiringLibUSB(usb.backend.libusb1._LibUSB):
    """A libusb context that is ended at the next refresh, not by its own finalizer."""

    def _finalize_object(self) -> None:
        ctx = getattr(self, "ctx", None)
        if ctx:
            _to_exit.append((self.lib, ctx))
            self.ctx = None


def libusb_backend() -> Any:
    """The current libusb backend; `usb.core.NoBackendError` without libusb."""
    global _current
    backend = _current
    if backend is None:
        with _lock:
            if _current is None:
                _current = usb.backend.libusb1.get_backend()
            backend = _current
    if backend is None:
        raise usb.core.NoBackendError("No backend available")
    return backend


def refresh_libusb() -> None:
    """Replace the current context with a new one that enumerates afresh,
    and end the contexts that were finalized since the last refresh."""
    global _current
    with _lock:
        _exit_retired()
        old = _current
        if old is None:
            return  # not used yet: the first use enumerates anyway
        # pyusb keeps one context per process (get_backend caches it); a
        # second _LibUSB over the same loaded library is a second libusb_init
        _current = _RetiringLibUSB(usb.backend.libusb1._lib)


def _exit_retired() -> None:
    while _to_exit:
        lib, ctx = _to_exit.popleft()
        lib.libusb_exit(ctx)


def is_libusb_backend(backend: Any) -> bool:
    """Whether a pyusb backend is libusb's (any context), not an emulated bus."""
    return isinstance(backend, usb.backend.libusb1._LibUSB)
