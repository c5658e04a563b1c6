"""Errors of USB device access, and the one boundary where pyusb's become ours.

Every libusb result reaches the engine through `status_for()`, which maps it
to the usbredir status the reference host would report (usbredirhost.c
`libusb_status_or_error_to_redir_status`), and says whether the device is
gone.  Nothing else in the engine inspects a `usb.core.USBError`.
"""

from __future__ import annotations

import errno

import usb.core

from redirgate.proto.usbredir import Status

__all__ = [
    "USB_CALL_ERRORS",
    "DeviceGoneError",
    "DeviceNotFoundError",
    "DeviceRefusedError",
    "DriverNotDetachedError",
    "SelectorError",
    "UsbAccessError",
    "is_timeout",
    "status_for",
]

#: What a pyusb call may raise for a device-side reason (ValueError: an
#: endpoint or interface pyusb does not know in the current setting).
USB_CALL_ERRORS = (usb.core.USBError, NotImplementedError, ValueError)

# libusb error codes (libusb.h), as pyusb keeps them in `backend_error_code`
_LIBUSB_ERROR_INVALID_PARAM = -2
_LIBUSB_ERROR_NO_DEVICE = -4
_LIBUSB_ERROR_TIMEOUT = -7
_LIBUSB_ERROR_OVERFLOW = -8
_LIBUSB_ERROR_PIPE = -9


class UsbAccessError(Exception):
    """Base of the client's USB errors; carries the device and the reason."""

    def __init__(self, device: str, reason: str) -> None:
        self.device = device
        self.reason = reason
        super().__init__(f"{device}: {reason}")


class DeviceNotFoundError(UsbAccessError):
    """No device matches the selector (yet)."""


class DeviceGoneError(UsbAccessError):
    """The device was unplugged or lost while in use."""


class DeviceRefusedError(UsbAccessError):
    """A device the client never exports (a hub, the thin client's boot
    device: client/usb/safety.py), even when named explicitly."""


class DriverNotDetachedError(DeviceRefusedError):
    """A kernel driver holds an interface and cannot be detached."""


class SelectorError(ValueError):
    """A device selector string that cannot be understood."""


def status_for(exc: BaseException) -> tuple[Status, bool]:
    """(usbredir status, device gone?) for an exception from a pyusb call."""
    if isinstance(exc, ValueError):
        return Status.INVAL, False
    if not isinstance(exc, usb.core.USBError):
        return Status.IOERROR, False
    code = getattr(exc, "backend_error_code", None)
    err = exc.errno
    if code == _LIBUSB_ERROR_NO_DEVICE or err == errno.ENODEV:
        return Status.IOERROR, True
    if isinstance(exc, usb.core.USBTimeoutError) or code == _LIBUSB_ERROR_TIMEOUT or err == errno.ETIMEDOUT:
        return Status.TIMEOUT, False
    if code == _LIBUSB_ERROR_PIPE or err == errno.EPIPE:
        return Status.STALL, False
    if code == _LIBUSB_ERROR_OVERFLOW or err == errno.EOVERFLOW:
        return Status.BABBLE, False
    if code == _LIBUSB_ERROR_INVALID_PARAM or err == errno.EINVAL:
        return Status.INVAL, False
    return Status.IOERROR, False


def is_timeout(exc: BaseException) -> bool:
    return status_for(exc)[0] is Status.TIMEOUT
