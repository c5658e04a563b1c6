"""The errors the virtual USB stack raises, shaped like pyusb's libusb1 backend's.

Code written against a real device catches ``usb.core.USBError`` and looks at
``errno`` / ``backend_error_code``; the virtual backend therefore raises the
same classes with the same ``(strerror, LIBUSB_ERROR_*, errno)`` triple that
``usb.backend.libusb1._check`` produces (timeouts as
``usb.core.USBTimeoutError``).  Our subclasses add ``device`` and ``reason``.
Also owns `Stall`, the exception a device model raises to STALL a request.
This module holds no state and does no I/O.
"""

from __future__ import annotations

import enum
import errno

import usb.core

__all__ = [
    "LibusbError",
    "Stall",
    "VirtualSpecError",
    "VirtualUSBError",
    "VirtualUSBTimeoutError",
    "usb_error",
]


class LibusbError(enum.IntEnum):
    """libusb_error codes (libusb.h), the ``backend_error_code`` pyusb keeps."""

    IO = -1
    INVALID_PARAM = -2
    ACCESS = -3
    NO_DEVICE = -4
    NOT_FOUND = -5
    BUSY = -6
    TIMEOUT = -7
    OVERFLOW = -8
    PIPE = -9
    INTERRUPTED = -10
    NO_MEM = -11
    NOT_SUPPORTED = -12
    OTHER = -99


# strerror and errno exactly as usb/backend/libusb1.py maps them.
_TEXT_ERRNO: dict[LibusbError, tuple[str, int | None]] = {
    LibusbError.IO: ("Input/output error", errno.EIO),
    LibusbError.INVALID_PARAM: ("Invalid parameter", errno.EINVAL),
    LibusbError.ACCESS: ("Access denied (insufficient permissions)", errno.EACCES),
    LibusbError.NO_DEVICE: ("No such device (it may have been disconnected)", errno.ENODEV),
    LibusbError.NOT_FOUND: ("Entity not found", errno.ENOENT),
    LibusbError.BUSY: ("Resource busy", errno.EBUSY),
    LibusbError.TIMEOUT: ("Operation timed out", errno.ETIMEDOUT),
    LibusbError.OVERFLOW: ("Overflow", errno.EOVERFLOW),
    LibusbError.PIPE: ("Pipe error", errno.EPIPE),
    LibusbError.INTERRUPTED: ("System call interrupted (perhaps due to signal)", errno.EINTR),
    LibusbError.NO_MEM: ("Insufficient memory", errno.ENOMEM),
    LibusbError.NOT_SUPPORTED: ("Operation not supported or unimplemented on this platform", errno.ENOSYS),
    LibusbError.OTHER: ("Unknown error", None),
}


class VirtualUSBError(usb.core.USBError):
    """A usb.core.USBError from a virtual device; ``device`` names it and
    ``reason`` says why (the strerror stays libusb's own text)."""

    def __init__(self, code: LibusbError, device: str, reason: str) -> None:
        text, err = _TEXT_ERRNO[code]
        super().__init__(text, int(code), err)
        self.device = device
        self.reason = reason

    def __str__(self) -> str:
        return f"{super().__str__()} ({self.device}: {self.reason})"


class VirtualUSBTimeoutError(VirtualUSBError, usb.core.USBTimeoutError):
    """LIBUSB_ERROR_TIMEOUT: what pyusb's libusb1 backend raises as
    usb.core.USBTimeoutError."""


def usb_error(code: LibusbError, device: str, reason: str) -> VirtualUSBError:
    """The exception pyusb's libusb1 backend would raise for ``code``."""
    if code == LibusbError.TIMEOUT:
        return VirtualUSBTimeoutError(code, device, reason)
    return VirtualUSBError(code, device, reason)


class Stall(Exception):
    """Raised by a device model to STALL the current request or endpoint."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class VirtualSpecError(ValueError):
    """A ``virtual:...`` device spec could not be understood."""

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__(f"bad virtual device spec {spec!r}: {reason}")
        self.spec = spec
        self.reason = reason
