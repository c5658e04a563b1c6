"""Errors of the parallel-port side; each names the port and the reason.

OSError from open/write/ioctl is translated into these in `printer.py` and
`ppdev.py` only (`raise ... from exc`), so the service and the channel code
never look at an errno.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redirgate.client.parallel.status import PrinterStatus

__all__ = ["NotAParport", "ParallelError", "PortBusy", "PortUnavailable", "PrinterNotReady"]


class ParallelError(Exception):
    """Base: `port` is the export name or path, `reason` what went wrong."""

    def __init__(self, port: str, reason: str) -> None:
        self.port = port
        self.reason = reason
        super().__init__(f"{port}: {reason}")


class PortUnavailable(ParallelError):
    """The port cannot be opened now (ENOENT, EACCES, EBUSY, a FIFO nobody
    reads, ...) or vanished while open; the service reopens it later."""


class PortBusy(ParallelError):
    """A consumer is already attached to this port."""


class PrinterNotReady(ParallelError):
    """The port is open but the printer takes no data: off, offline, out of
    paper or reporting an error.  `status` is what the status lines said
    (unknown when the device cannot tell).  Queued data waits for it."""

    def __init__(self, port: str, reason: str, status: PrinterStatus | None = None) -> None:
        self.status = status
        super().__init__(port, reason)


class NotAParport(ParallelError):
    """The path is not a ppdev device (/dev/parportN): PPCLAIM gave ENOTTY."""
