"""The stand-in serial device of bench/serial.py: a pty pair, its master end driven here.

    python bench/serial_device.py

Opens a pty pair, puts the line in raw mode, prints ``PTY /dev/pts/N`` and
then serves the master end (what a UART's far side would be) until stdin
closes.  By default every byte that arrives is written straight back (the
echo the round-trip and echo figures time); one command a line on stdin
switches the next transfer:

``sink N``    the next N bytes that arrive are counted, not echoed; then
              ``SUNK N CRC32`` on stdout (CRC of what arrived)
``source N``  write N bytes of :data:`PATTERN` to the line (blocking writes:
              the reader paces them); then ``SOURCED N`` on stdout
``ping``      ``PONG`` (the benchmark's way to know the device is idle)

It also keeps the slave end open, so the pty outlives programs that open
and close it per connection (ser2net does): with no slave holder, reading
the master fails with EIO.  It never measures time; the benchmark does, on
its own clock.  Only the standard library, so it stays small and cheap.
"""

from __future__ import annotations

import os
import selectors
import sys
import tty
import zlib

#: 256 distinct bytes, NUL, XON/XOFF, CR, LF and 0xFF (telnet IAC) included:
#: a path that is not byte-transparent shows as a CRC mismatch.
PATTERN = bytes(range(256)) * 256  # 64 KiB
READ_BYTES = 65536


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve(master: int) -> None:
    """The command loop: echo by default, `sink`/`source` when told, until stdin ends.

    stdin is read from its descriptor and split here: a buffered readline
    would keep a second command that arrived in the same read out of
    select's sight."""
    stdin = sys.stdin.fileno()
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ, "cmd")
    sel.register(master, selectors.EVENT_READ, "line")
    sink_left, sink_crc, sink_total = 0, 0, 0
    buf = bytearray(READ_BYTES)
    view = memoryview(buf)
    pending = b""
    while True:
        for key, _ in sel.select():
            if key.data == "line":
                n = os.readv(master, [buf])
                if n <= 0:
                    return
                if sink_left > 0:
                    take = min(n, sink_left)
                    sink_crc = zlib.crc32(view[:take], sink_crc)
                    sink_left -= take
                    if sink_left == 0:
                        print(f"SUNK {sink_total} {sink_crc}", flush=True)
                    if take < n:
                        _write_all(master, view[take:n])
                else:
                    _write_all(master, view[:n])
                continue
            data = os.read(stdin, 4096)
            if not data:
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                word, _, arg = line.decode().strip().partition(" ")
                if word == "sink":
                    sink_left = sink_total = int(arg)
                    sink_crc = 0
                elif word == "source":
                    _source(master, int(arg))
                    print(f"SOURCED {arg}", flush=True)
                elif word == "ping":
                    print("PONG", flush=True)


def _source(master: int, count: int) -> None:
    while count > 0:
        chunk = PATTERN[: min(count, len(PATTERN))]
        _write_all(master, chunk)
        count -= len(chunk)


def main() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no CR/LF mapping, no XON/XOFF: a byte-transparent line
    print(f"PTY {os.ttyname(slave)}", flush=True)
    try:
        serve(master)
    except (OSError, KeyboardInterrupt):  # the benchmark went away, or stopped us
        pass
    finally:
        os.close(master)
        os.close(slave)


if __name__ == "__main__":
    main()
