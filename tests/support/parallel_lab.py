"""Helpers for the parallel-port tests.

`Fifo` is the stand-in printer: a named pipe whose read end the test holds
(the service opens the write end, so "nobody reads" is ENXIO, a reader
closing is EPIPE - the real kernel does both).  `EmulatedLp` stands in for
the lp driver where hardware is needed: it is a real `PrinterPort` on a
real FIFO whose two OS hooks behave as drivers/char/lp.c does for an
O_NONBLOCK writer, given a status register the test sets:
`lp_check_status` gives ENOSPC for paper out and EIO for offline when the
printer asserts nFault, a printer that does not handshake takes nothing
(EAGAIN), and LPGETSTATUS returns the register.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import trio

from redirgate.client.parallel.printer import PrinterPort
from redirgate.client.parallel.status import StatusBits

#: A printer that is online, not busy, has paper and no error.
READY = StatusBits.BUSY | StatusBits.ACK | StatusBits.SELECT | StatusBits.ERROR
#: Out of paper as printers signal it: PE high, nFault low, BUSY.
PAPER_OUT = (READY | StatusBits.PAPEROUT) & ~StatusBits.ERROR & ~StatusBits.BUSY
#: Offline: SELECT low, nFault low, BUSY.
OFFLINE = READY & ~StatusBits.SELECT & ~StatusBits.ERROR & ~StatusBits.BUSY
#: Busy (printing), nothing wrong.
BUSY = READY & ~StatusBits.BUSY
#: Out of paper without nFault: lp.c (not LPCAREFUL) sees no error and just
#: gets no handshake - EAGAIN - so only the status lines can say why.
STUCK_PAPER_OUT = (READY | StatusBits.PAPEROUT) & ~StatusBits.BUSY


class Fifo:
    """A named pipe; `open_reader()` makes the printer "present"."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.fd = -1

    def open_reader(self) -> None:
        assert self.fd < 0
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)

    def close_reader(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    async def read_exactly(self, n: int, *, chunk_pause_s: float = 0.0) -> bytes:
        """Read n bytes (waiting for a writer as needed); `chunk_pause_s` makes a slow printer."""
        out = bytearray()
        while len(out) < n:
            try:
                data = os.read(self.fd, min(65536, n - len(out)))
            except BlockingIOError:
                data = None
            if data:
                out += data
                if chunk_pause_s:
                    await trio.sleep(chunk_pause_s)  # the slow printer the caller asked for
            elif data is None:
                await trio.lowlevel.wait_readable(self.fd)
            else:  # EOF: no writer right now
                await trio.sleep(0.02)  # a poll interval: a FIFO at EOF stays readable until a writer opens it
        return bytes(out)

    def read_available(self) -> bytes:
        try:
            return os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return b""


@contextlib.contextmanager
def fifo(path: Path, *, reader: bool = True) -> Iterator[Fifo]:
    f = Fifo(path)
    if reader:
        f.open_reader()
    try:
        yield f
    finally:
        f.close_reader()


class LpState:
    """The emulated printer's status register, shared by every port opened on it."""

    def __init__(self, register: int = READY) -> None:
        self.register = int(register)
        self.opened: list[EmulatedLp] = []

    def open_port(self, path: str, *, name: str) -> EmulatedLp:
        """For `PrinterService(open_port=...)`: the real open of `path`, lp behaviour on top."""
        port = EmulatedLp.open(path, name=name)
        port.kind = "lp"
        port.pollable = False  # as PrinterPort.open decides for lp (lp.c has no poll): retried on a timer
        port.state = self
        port.status_known = True
        self.opened.append(port)
        return port


class EmulatedLp(PrinterPort):
    """A PrinterPort whose driver answers like lp.c for O_NONBLOCK (see module doc)."""

    state: LpState | None = None

    def _register(self) -> int:
        return self.state.register if self.state is not None else int(READY)

    def _os_write(self, view: memoryview) -> int:
        # lp_check_status (not LPCAREFUL): nFault high means no error, whatever
        # else the lines say; with nFault low, paper out is ENOSPC, anything else EIO.
        status = self._register()
        if not status & StatusBits.ERROR:
            code = errno.ENOSPC if status & StatusBits.PAPEROUT else errno.EIO
            raise OSError(code, os.strerror(code))
        if not status & StatusBits.BUSY:  # no handshake within the O_NONBLOCK jiffy
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return super()._os_write(view)

    def _os_status(self) -> int:
        return self._register()
