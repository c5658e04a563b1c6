"""/dev/parportN through ppdev: claim the port, read and write its three registers.

A small typed wrapper over the ppdev ioctls for what a consumer needs when
the lp driver is not in the way: the data latch, the status lines and the
control lines (STROBE, AUTOFD, INIT, SELECT).  `Parport.open` opens the
node and claims the port (PPCLAIM: without it reads, writes and most ioctls
give EINVAL); `close` releases it.  `write()` on a claimed port sends a
Centronics (COMPAT mode) byte stream, which is how `PrinterPort` uses it.

It is the one boundary where OSError from ppdev becomes our errors:
ENOENT/EACCES/EBUSY/ENXIO/ENODEV -> PortUnavailable, ENOTTY on PPCLAIM (a
file, FIFO or pty, not a ppdev node) -> NotAParport.  No hardware is driven
in tests: the error paths are.  Never loads modules, never touches the
port's mode (PPSETMODE/PPNEGOT) - COMPAT, the default, is what printers take.

ioctl numbers (x86-64 and every Linux arch with the generic _IOC layout)
from linux/ppdev.h, checked with gcc against Debian 12's linux-libc-dev:
PPCLAIM = _IO('p', 0x8b), PPRELEASE = _IO('p', 0x8c), PPEXCL =
_IO('p', 0x8f), PPRSTATUS = _IOR('p', 0x81, u8), PPRCONTROL =
_IOR('p', 0x83, u8), PPWCONTROL = _IOW('p', 0x84, u8), PPWDATA =
_IOW('p', 0x86, u8).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from enum import IntFlag
from types import TracebackType
from typing import Final, Self

from redirgate.client.parallel.errors import NotAParport, ParallelError, PortUnavailable
from redirgate.client.parallel.status import PrinterStatus

__all__ = [
    "PPCLAIM",
    "PPEXCL",
    "PPRCONTROL",
    "PPRELEASE",
    "PPRSTATUS",
    "PPWCONTROL",
    "PPWDATA",
    "PP_MAJOR",
    "Control",
    "Parport",
    "open_errno_reason",
]

log = logging.getLogger(__name__)

PPCLAIM: Final = 0x708B
PPRELEASE: Final = 0x708C
PPEXCL: Final = 0x708F
PPRSTATUS: Final = 0x80017081
PPRCONTROL: Final = 0x80017083
PPWCONTROL: Final = 0x40017084
PPWDATA: Final = 0x40017086
#: linux/major.h PP_MAJOR: /dev/parportN character devices.
PP_MAJOR: Final = 99

#: errnos meaning "this node has no such ioctl": not a ppdev device.
_NOT_PPDEV = {errno.ENOTTY, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}


class Control(IntFlag):
    """Control register bits as ppdev reads/writes them (linux/parport.h
    PARPORT_CONTROL_*; the driver hides the hardware's inversions)."""

    STROBE = 0x1
    AUTOFD = 0x2
    INIT = 0x4
    SELECT = 0x8


def open_errno_reason(exc: OSError, path: str, *, fifo: bool = False) -> str:
    """A one-line reason for a failed open() of a port node (`fifo`: it is a named pipe)."""
    code = exc.errno
    if code == errno.ENXIO and fifo:
        return f"{path}: nobody reads this FIFO"
    if code == errno.ENOENT:
        return f"{path}: no such device"
    if code in (errno.EACCES, errno.EPERM):
        return f"{path}: permission denied (is this user in the device's group, usually lp?)"
    if code == errno.EBUSY:
        return f"{path}: in use by another program"
    if code == errno.ENXIO:
        return f"{path}: no device behind this node (driver not loaded, or nothing attached)"
    if code == errno.ENODEV:
        return f"{path}: no device behind this node (driver not loaded?)"
    return f"{path}: cannot open: {exc.strerror or exc}"


class Parport:
    """A claimed /dev/parportN (use `Parport.open`; close it, or use `with`)."""

    def __init__(self, fd: int, path: str, name: str) -> None:
        self.fd = fd
        self.path = path
        self.name = name
        self.claimed = True

    @classmethod
    def open(cls, path: str, *, name: str | None = None, exclusive: bool = False) -> Self:
        """Open non-blocking and claim; `exclusive` asks for PPEXCL first (no
        other driver, lp included, may share the port while we hold it)."""
        label = name or path
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            raise PortUnavailable(label, open_errno_reason(exc, path)) from exc
        try:
            if exclusive:
                _ioctl_none(fd, PPEXCL, label, "PPEXCL")
            _ioctl_none(fd, PPCLAIM, label, "PPCLAIM")
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path, label)

    # -- registers ---------------------------------------------------------

    def read_status(self) -> PrinterStatus:
        return PrinterStatus(self._read_u8(PPRSTATUS, "PPRSTATUS"))

    def read_control(self) -> Control:
        return Control(self._read_u8(PPRCONTROL, "PPRCONTROL") & 0x0F)

    def write_control(self, lines: Control) -> None:
        self._write_u8(PPWCONTROL, "PPWCONTROL", int(lines) & 0x0F)

    def write_data(self, value: int) -> None:
        """Put one byte on the data lines (no strobe: see `write()` for that)."""
        if not 0 <= value <= 0xFF:
            raise ValueError(f"a data byte is 0..255, not {value}")
        self._write_u8(PPWDATA, "PPWDATA", value)

    def _read_u8(self, request: int, what: str) -> int:
        buf = bytearray(1)
        self._ioctl(request, buf, what)
        return buf[0]

    def _write_u8(self, request: int, what: str, value: int) -> None:
        self._ioctl(request, bytearray((value,)), what)

    def _ioctl(self, request: int, buf: bytearray, what: str) -> None:
        if self.fd < 0:
            raise PortUnavailable(self.name, "the port is closed")
        try:
            fcntl.ioctl(self.fd, request, buf, True)
        except OSError as exc:
            raise _translate(exc, self.name, what) from exc

    # -- lifetime ----------------------------------------------------------

    def release(self) -> None:
        if self.claimed and self.fd >= 0:
            self.claimed = False
            try:
                fcntl.ioctl(self.fd, PPRELEASE)
            except OSError as exc:
                log.debug("%s: PPRELEASE: %s", self.name, exc)

    def close(self) -> None:
        """Release and close; idempotent."""
        if self.fd < 0:
            return
        self.release()
        fd, self.fd = self.fd, -1
        os.close(fd)

    def __enter__(self) -> Parport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _ioctl_none(fd: int, request: int, name: str, what: str) -> None:
    try:
        fcntl.ioctl(fd, request)
    except OSError as exc:
        raise _translate(exc, name, what) from exc


def _translate(exc: OSError, name: str, what: str) -> ParallelError:
    if exc.errno in _NOT_PPDEV and what in ("PPCLAIM", "PPEXCL"):
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return NotAParport(name, f"not a ppdev device (/dev/parportN): {what} gave {code}")
    if exc.errno == errno.EBUSY:
        return PortUnavailable(name, f"{what}: the port is claimed exclusively by another program")
    return PortUnavailable(name, f"{what}: {exc.strerror or exc}")
