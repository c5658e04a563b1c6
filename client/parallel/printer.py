"""One open printer port: /dev/lpN, /dev/usb/lpN, /dev/parportN, or a stand-in.

Owns opening (O_WRONLY|O_NONBLOCK: the lp driver then returns errors instead
of retrying every 10 s inside write()), the status lines, and fd-level
writes on the trio loop.  It is the one boundary where OSError becomes our
errors:

* open: ENOENT, EACCES, EBUSY (the lp driver allows one opener), ENXIO (a
  FIFO nobody reads) -> `PortUnavailable`;
* write: EAGAIN -> 0 bytes taken (the caller waits and retries; nothing is
  ever dropped), ENOSPC -> `PrinterNotReady("printer out of paper")`, EIO on
  an lp/ppdev port -> `PrinterNotReady` named from the status lines;
  EPIPE, ENODEV, ENXIO, EIO elsewhere -> `PortUnavailable` (vanished);
* status: `LPGETSTATUS` (linux/lp.h: 0x060b, an `int *`) on lp and usblp
  (where it is the USB printer class's port status: `PrinterStatus.usb`),
  `PPRSTATUS` on ppdev.  ENOTTY means the node is not a printer (a file,
  FIFO or pty standing in for one in tests): "status unknown", just written.

Waiting: FIFOs, ptys, sockets and usblp support poll(), so `wait_writable`
is `trio.lowlevel.wait_writable`.  The lp driver and regular files have no
poll (epoll_ctl says EPERM) and ppdev's poll only reports interrupts, so
there it sleeps `retry_interval_s` instead - the lp driver itself waits one
jiffy per non-blocking write.  Never a thread; never buffers on its own.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
from typing import Final, Self

import trio

from redirgate.client.parallel.errors import PortUnavailable, PrinterNotReady
from redirgate.client.parallel.ppdev import PP_MAJOR, Parport, open_errno_reason
from redirgate.client.parallel.status import UNKNOWN, PrinterStatus

__all__ = ["LPGETSTATUS", "LP_MAJOR", "USBLP_MAJOR", "PrinterPort"]

log = logging.getLogger(__name__)

#: linux/lp.h `LPGETSTATUS` (_IO-style plain number; the argument is an int *).
LPGETSTATUS: Final = 0x060B
#: linux/major.h LP_MAJOR (/dev/lpN) and USB_CHAR_MAJOR's usblp range (/dev/usb/lpN).
LP_MAJOR: Final = 6
USBLP_MAJOR: Final = 180
_INT = struct.Struct("i")
#: errnos meaning "no such ioctl here": not a printer node.
_NO_STATUS = {errno.ENOTTY, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}
_VANISHED = {errno.ENODEV, errno.ENXIO, errno.EBADF, errno.ENOENT}
DEFAULT_RETRY_INTERVAL_S: Final = 0.02


class PrinterPort:
    """An open printer port (use `PrinterPort.open`)."""

    def __init__(
        self,
        fd: int,
        path: str,
        name: str,
        *,
        kind: str,
        pollable: bool,
        parport: Parport | None = None,
        retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S,
    ) -> None:
        self.fd = fd
        self.path = path
        self.name = name
        #: "lp" (lp or usblp driver), "ppdev", "file" or "other" (FIFO, pty, ...)
        self.kind = kind
        self.pollable = pollable
        self.retry_interval_s = retry_interval_s
        self._parport = parport
        #: usblp: the status byte is the USB printer class's (status.py)
        self.usb_status = False
        self.status_known = True
        #: Why the port stopped working (set when it vanished), or None.
        self.gone_reason: str | None = None

    @classmethod
    def open(cls, path: str, *, name: str | None = None, retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S) -> Self:
        """Open `path` for writing, non-blocking; probe whether it has status lines."""
        label = name or path
        try:
            info = os.stat(path)
        except OSError as exc:
            raise PortUnavailable(label, open_errno_reason(exc, path)) from exc
        major = os.major(info.st_rdev) if stat.S_ISCHR(info.st_mode) else -1
        parport = None
        if major == PP_MAJOR:
            parport = Parport.open(path, name=label)
            fd, kind = parport.fd, "ppdev"
        else:
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            if stat.S_ISREG(info.st_mode):
                flags |= os.O_APPEND  # "print to file": never overwrite what is there
            try:
                fd = os.open(path, flags)
            except OSError as exc:
                reason = open_errno_reason(exc, path, fifo=stat.S_ISFIFO(info.st_mode))
                raise PortUnavailable(label, reason) from exc
            kind = "lp" if major in (LP_MAJOR, USBLP_MAJOR) else "file" if stat.S_ISREG(info.st_mode) else "other"
        pollable = kind not in ("ppdev", "file") and major != LP_MAJOR
        port = cls(fd, path, label, kind=kind, pollable=pollable, parport=parport, retry_interval_s=retry_interval_s)
        port.usb_status = major == USBLP_MAJOR
        try:
            port.status()  # settles status_known
        except BaseException:
            port.close()
            raise
        return port

    # -- OS hooks (the only two calls that touch the device while open) ----

    def _os_write(self, view: memoryview) -> int:
        return os.write(self.fd, view)

    def _os_status(self) -> int:
        if self._parport is not None:
            raw = self._parport.read_status().raw
            assert raw is not None
            return raw
        buf = bytearray(_INT.size)
        fcntl.ioctl(self.fd, LPGETSTATUS, buf, True)
        return int(_INT.unpack(buf)[0]) & 0xFF

    # -- status --------------------------------------------------------------

    def status(self) -> PrinterStatus:
        """The status lines now; UNKNOWN (and never asked again) when the
        node has no LPGETSTATUS (ENOTTY: not a printer)."""
        if not self.status_known:
            return UNKNOWN
        try:
            return PrinterStatus(self._os_status(), usb=self.usb_status)
        except PortUnavailable:
            raise
        except OSError as exc:
            if exc.errno in _NO_STATUS:
                self.status_known = False
                log.debug("%s: %s has no status lines (%s): status unknown", self.name, self.path, exc.strerror)
                return UNKNOWN
            raise self._gone(f"reading the status: {exc.strerror or exc}") from exc

    # -- writing -------------------------------------------------------------

    def write_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the port takes now (0 when it takes nothing yet);
        PrinterNotReady when the printer refuses, PortUnavailable when gone."""
        if self.fd < 0:
            raise PortUnavailable(self.name, self.gone_reason or "the port is closed")
        try:
            return self._os_write(memoryview(data))
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            raise self._write_error(exc) from exc

    def _write_error(self, exc: OSError) -> PrinterNotReady | PortUnavailable:
        code = exc.errno
        if code == errno.ENOSPC:
            return PrinterNotReady(self.name, "printer out of paper", self._status_quietly())
        if code == errno.EIO and self.kind in ("lp", "ppdev"):
            status = self._status_quietly()
            return PrinterNotReady(self.name, status.problem or "printer offline or reporting an error (EIO)", status)
        if code == errno.EPIPE:
            return self._gone("the reader went away (EPIPE)")
        if code in _VANISHED or code == errno.EIO:
            return self._gone(f"the device vanished ({errno.errorcode.get(code or 0, code)})")
        return self._gone(f"write failed: {exc.strerror or exc}")

    def _status_quietly(self) -> PrinterStatus:
        try:
            return self.status()
        except PortUnavailable:
            return UNKNOWN

    def _gone(self, reason: str) -> PortUnavailable:
        self.gone_reason = self.gone_reason or reason
        return PortUnavailable(self.name, reason)

    async def wait_writable(self) -> None:
        """Until a write may make progress (or, on a port without poll, a short sleep)."""
        if self.pollable:
            try:
                await trio.lowlevel.wait_writable(self.fd)
                return
            except OSError as exc:
                if exc.errno != errno.EPERM:
                    raise self._gone(f"waiting to write: {exc.strerror or exc}") from exc
                self.pollable = False  # no poll() on this driver: fall back to retrying
        await trio.sleep(self.retry_interval_s)

    # -- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Close (and release a ppdev claim); idempotent."""
        if self.fd < 0:
            return
        if self.pollable:
            try:
                trio.lowlevel.notify_closing(self.fd)  # wake a task waiting on the fd
            except RuntimeError:  # not inside trio.run: nobody can be waiting
                pass
        fd, self.fd = self.fd, -1
        if self._parport is not None:
            self._parport.close()
        else:
            os.close(fd)
