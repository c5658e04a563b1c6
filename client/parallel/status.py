"""The parallel port status register, decoded: what a printer's lines say.

Pure data, no I/O.  The bits are the same in `LPGETSTATUS` (linux/lp.h
`LP_P*`) and ppdev's `PPRSTATUS` (linux/parport.h `PARPORT_STATUS_*`); the
values below were checked against the Debian 12 linux-libc-dev headers with
gcc.  Two lines are active low and BUSY is inverted by the port hardware, so
the raw bits read "set = fine" for ERROR and "set = not busy" for BUSY.

Which problem is named first follows the lp driver's own check
(drivers/char/lp.c `lp_check_status`): paper out, then offline, then error.
A printer that is switched off usually reads as offline or error.

A USB printer (usblp, /dev/usb/lpN) answers `LPGETSTATUS` with the USB
printer class's GET_PORT_STATUS byte (USB Printer Class 1.1, 4.2.2): the
same three bits in the same places (0x08 not error, 0x10 selected, 0x20
paper empty), but bits 6 and 7 are reserved: there is no BUSY or ACK line,
so `PrinterStatus(raw, usb=True)` never reads them (a ready USB printer
says 0x18, which the parallel port's inverted BUSY would call busy).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag
from typing import Final

__all__ = ["UNKNOWN", "PrinterStatus", "StatusBits"]


class StatusBits(IntFlag):
    """Raw status register bits (linux/lp.h, linux/parport.h)."""

    ERROR = 0x08  # LP_PERRORP: active low - set means "no error"
    SELECT = 0x10  # LP_PSELECD: active high - the printer is online
    PAPEROUT = 0x20  # LP_POUTPA: active high - out of paper
    ACK = 0x40  # LP_PACK: active low
    BUSY = 0x80  # LP_PBUSY: inverted - set means "not busy"


@dataclass(frozen=True)
class PrinterStatus:
    """One reading of the status lines; `raw` is None when the device cannot
    tell (not an lp/ppdev device: a file, FIFO or pty standing in)."""

    raw: int | None = None
    #: the USB printer class's port status (usblp), not a parallel port's register
    usb: bool = False

    @property
    def known(self) -> bool:
        return self.raw is not None

    def _bit(self, bit: StatusBits) -> bool:
        return self.raw is not None and bool(self.raw & bit)

    @property
    def paper_out(self) -> bool:
        return self._bit(StatusBits.PAPEROUT)

    @property
    def online(self) -> bool:
        return self._bit(StatusBits.SELECT)

    @property
    def error(self) -> bool:
        return self.raw is not None and not self.raw & StatusBits.ERROR

    @property
    def busy(self) -> bool:
        """The parallel port's BUSY line (a USB printer has none: never busy here)."""
        return self.raw is not None and not self.usb and not self.raw & StatusBits.BUSY

    @property
    def acknowledging(self) -> bool:
        return self.raw is not None and not self.usb and not self.raw & StatusBits.ACK

    @property
    def problem(self) -> str | None:
        """Why the printer takes no data, or None (fine, or unknown)."""
        if self.raw is None:
            return None
        if self.paper_out:
            return "printer out of paper"
        if not self.online:
            return "printer offline (or switched off)"
        if self.error:
            return "printer reports an error (or is switched off)"
        return None

    def describe(self) -> str:
        if self.raw is None:
            return "status unknown"
        problem = self.problem
        if problem is not None:
            return f"{problem} (status 0x{self.raw:02x})"
        return f"printer {'busy' if self.busy else 'ready'} (status 0x{self.raw:02x})"


UNKNOWN: Final = PrinterStatus(None)
