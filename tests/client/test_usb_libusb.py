"""client/usb/libusb.py: a replaced libusb context is ended only after its last device.

pyusb's resource manager drops its backend before its libusb_device, so a
context ended by its own finalizer was freed before libusb_unref_device
touched it (a segfault in the real-USB lab, issue 12).  A recording stand-in
for libusb checks the order of the calls, with pyusb's own objects.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Any

import pytest
import usb.backend.libusb1
import usb.core

from redirgate.client.usb import libusb


class _RecordingLib:
    """The libusb calls a context and a device make, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self._next_ctx = 0x1000

    def libusb_init(self, ctx_ref: Any) -> int:
        self._next_ctx += 0x10
        ctx_ref._obj.value = self._next_ctx
        self.calls.append(("init", self._next_ctx))
        return 0

    def libusb_exit(self, ctx: ctypes.c_void_p) -> None:
        self.calls.append(("exit", ctx.value or 0))

    def libusb_ref_device(self, dev: int) -> int:
        return dev

    def libusb_unref_device(self, dev: int) -> None:
        self.calls.append(("unref", dev))


@pytest.fixture
def recording_lib(monkeypatch: pytest.MonkeyPatch) -> _RecordingLib:
    lib = _RecordingLib()
    monkeypatch.setattr(usb.backend.libusb1, "_lib", lib)
    monkeypatch.setattr(libusb, "_current", object())  # as if the client had enumerated once
    monkeypatch.setattr(libusb, "_to_exit", type(libusb._to_exit)())
    return lib


def test_a_replaced_context_ends_after_its_last_device_not_before(recording_lib: _RecordingLib) -> None:
    libusb.refresh_libusb()
    backend = libusb.libusb_backend()
    ctx = backend.ctx.value
    # what usb.core.find builds for each device it returns
    manager = usb.core._ResourceManager(usb.backend.libusb1._Device(0xD1), backend)
    del backend
    libusb.refresh_libusb()  # a uevent: a new context becomes current; the device keeps the old one
    assert ("exit", ctx) not in recording_lib.calls
    del manager  # the device's last user lets go: the device, then its backend
    gc.collect()
    assert ("unref", 0xD1) in recording_lib.calls
    assert ("exit", ctx) not in recording_lib.calls  # not from the finalizer, with the device still being freed
    libusb.refresh_libusb()
    calls = recording_lib.calls
    assert calls.index(("unref", 0xD1)) < calls.index(("exit", ctx))


def test_each_retired_context_is_ended_once(recording_lib: _RecordingLib) -> None:
    libusb.refresh_libusb()
    first = libusb.libusb_backend().ctx.value
    libusb.refresh_libusb()  # nothing holds the first: it is queued
    libusb.refresh_libusb()  # ... and ended here
    libusb.refresh_libusb()
    assert [call for call in recording_lib.calls if call == ("exit", first)] == [("exit", first)]
