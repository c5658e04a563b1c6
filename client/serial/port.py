"""One open tty, driven through its file descriptor on the trio loop.

Owns opening (exclusive, non-blocking, through pyserial so every termios
detail - custom baud rates included - is pyserial's), applying and verifying
line settings, and the fd-level I/O: `read_nowait` / `write_nowait` never
wait, `wait_readable` / `wait_writable` are the waits (the service loops on
them, so no byte is ever dropped).  It is the one boundary where
OSError / SerialException become our errors: a vanished device (EIO, ENXIO,
ENODEV, EOF on a hung-up tty) becomes `PortUnavailable`, a setting the port
refuses or silently ignores becomes `SettingError` naming the setting.
Never a polling thread; never buffers on its own.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import termios

import serial
import trio

from redirgate.client.serial.errors import PortUnavailable, SettingError
from redirgate.client.serial.selector import PortSelector
from redirgate.client.serial.settings import LineSettings

__all__ = ["MODEM_CD", "MODEM_CTS", "MODEM_DSR", "MODEM_RI", "SerialPort"]

log = logging.getLogger(__name__)

_GONE = {errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF, errno.ENOENT}
_PARITY = {
    "N": serial.PARITY_NONE,
    "E": serial.PARITY_EVEN,
    "O": serial.PARITY_ODD,
    "M": serial.PARITY_MARK,
    "S": serial.PARITY_SPACE,
}
_STOP = {1: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2: serial.STOPBITS_TWO}
_CSIZE = {5: termios.CS5, 6: termios.CS6, 7: termios.CS7, 8: termios.CS8}
_INT = struct.Struct("i")
# Linux asm-generic/ioctls.h; Python's termios module lacks these three.
_TIOCSBRK: int = getattr(termios, "TIOCSBRK", 0x5427)
_TIOCCBRK: int = getattr(termios, "TIOCCBRK", 0x5428)
_TIOCGICOUNT: int = getattr(termios, "TIOCGICOUNT", 0x545D)
#: struct serial_icounter_struct: cts dsr rng dcd rx tx frame overrun parity brk buf_overrun reserved[9].
_ICOUNT = struct.Struct("20i")
#: errnos meaning "this tty has no such ioctl" (a pty has no modem lines).
_UNSUPPORTED = {errno.ENOTTY, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}
MODEM_CTS, MODEM_DSR, MODEM_RI, MODEM_CD = termios.TIOCM_CTS, termios.TIOCM_DSR, termios.TIOCM_RI, termios.TIOCM_CD


def _describe(exc: BaseException) -> str:
    """termios.error carries (errno, text); say it like OSError does."""
    if isinstance(exc, termios.error) and len(exc.args) == 2:
        return f"{exc.args[1]} (errno {exc.args[0]})"
    return str(exc)


class SerialPort:
    """An open tty (use `SerialPort.open`)."""

    def __init__(self, device: serial.Serial, path: str, name: str) -> None:
        self._serial = device
        self.path = path
        self.name = name
        self.fd: int = device.fileno()
        self.settings: LineSettings | None = None
        self.closed = False
        #: Why the port stopped working (set by whoever saw it vanish), or None.
        self.gone_reason: str | None = None

    @classmethod
    def open(cls, selector: PortSelector, settings: LineSettings, *, name: str | None = None) -> SerialPort:
        """Resolve, open exclusively and non-blocking, apply `settings` (verified)."""
        label = name or str(selector)
        path = selector.resolve()
        try:
            # port=None: configure first, then open (pyserial 3.5 has no do_not_open).
            device = serial.Serial(
                None,
                baudrate=settings.baud,
                exclusive=True,
                timeout=0,
                write_timeout=0,
                # VMIN=1, VTIME=0 on every reconfigure: a non-blocking read
                # with nothing there says EAGAIN, so 0 bytes read means the
                # tty hung up (pyserial's default VMIN=0 reads 0 when empty,
                # which the relay reactor, reading without a wait first,
                # would take for the end of the port)
                inter_byte_timeout=0,
                dsrdtr=False,
                rtscts=False,
                xonxoff=False,
            )
            device.port = path
            device.open()
        except (serial.SerialException, OSError) as exc:
            raise PortUnavailable(label, f"cannot open {path}: {exc}") from exc
        os.set_blocking(device.fileno(), False)
        port = cls(device, path, label)
        try:
            port.apply(settings)
            if settings.dtr_on_open is not None:
                port.set_dtr(settings.dtr_on_open)
            if settings.rts_on_open is not None:
                port.set_rts(settings.rts_on_open)
        except BaseException:
            port.close(apply_close_lines=False)
            raise
        return port

    # -- settings ----------------------------------------------------------

    def apply(self, settings: LineSettings) -> None:
        """Set every line setting, then read termios back: a setting the
        driver refused, changed or ignored is a SettingError naming it, and
        the port is left exactly as it was."""
        s = self._serial
        wanted = {
            "baud": ("baudrate", settings.baud),
            "data_bits": ("bytesize", settings.data_bits),
            "parity": ("parity", _PARITY[settings.parity]),
            "stop_bits": ("stopbits", _STOP[settings.stop_bits]),
            "rtscts": ("rtscts", settings.rtscts),
            "xonxoff": ("xonxoff", settings.xonxoff),
        }
        # pyserial caches each attribute and re-sends them all on every change,
        # so a refused value must be taken back, or every later change fails
        # too.  Undoing in reverse order only passes through states the driver
        # already accepted on the way here.
        changed: list[tuple[str, object]] = []
        try:
            for setting, (attr, value) in wanted.items():
                old = getattr(s, attr)
                if old == value and setting != "baud":
                    continue
                changed.append((attr, old))
                try:
                    setattr(s, attr, value)
                except (serial.SerialException, OSError, ValueError, termios.error) as exc:
                    self._raise_if_gone(exc)
                    raise SettingError(self.name, setting, getattr(settings, setting), _describe(exc)) from exc
            self._verify(settings)
        except SettingError:
            for attr, old in reversed(changed):
                try:
                    setattr(s, attr, old)
                except (serial.SerialException, OSError, ValueError, termios.error) as again:
                    log.debug("%s: restoring %s=%r: %s", self.name, attr, old, again)
            raise
        self.settings = settings

    def _verify(self, settings: LineSettings) -> None:
        try:
            iflag, _oflag, cflag, _lflag, ispeed, _ospeed, _cc = termios.tcgetattr(self.fd)
        except termios.error as exc:
            self._raise_if_gone(exc)
            raise SettingError(self.name, "termios", None, _describe(exc)) from exc
        standard = getattr(termios, f"B{settings.baud}", None)
        if standard is not None and ispeed != standard:
            raise SettingError(self.name, "baud", settings.baud, "the driver did not take it")
        if cflag & termios.CSIZE != _CSIZE[settings.data_bits]:
            raise SettingError(self.name, "data_bits", settings.data_bits, "the driver forces another size")
        if bool(cflag & termios.PARENB) != (settings.parity != "N"):
            raise SettingError(self.name, "parity", settings.parity, "the driver forces another parity")
        if bool(cflag & termios.CSTOPB) != (settings.stop_bits != 1):
            raise SettingError(self.name, "stop_bits", settings.stop_bits, "the driver did not take it")
        if bool(cflag & termios.CRTSCTS) != settings.rtscts:
            raise SettingError(self.name, "rtscts", settings.rtscts, "the driver did not take it")
        if bool(iflag & termios.IXON) != settings.xonxoff:
            raise SettingError(self.name, "xonxoff", settings.xonxoff, "the driver did not take it")

    def _modem_ioctl(self, request: int, bits: int, setting: str, value: object) -> None:
        try:
            fcntl.ioctl(self.fd, request, _INT.pack(bits))
        except OSError as exc:
            self._raise_if_gone(exc)
            raise SettingError(self.name, setting, value, os.strerror(exc.errno or 0)) from exc

    def set_dtr(self, on: bool) -> None:
        self._modem_ioctl(termios.TIOCMBIS if on else termios.TIOCMBIC, termios.TIOCM_DTR, "dtr", on)

    def set_rts(self, on: bool) -> None:
        self._modem_ioctl(termios.TIOCMBIS if on else termios.TIOCMBIC, termios.TIOCM_RTS, "rts", on)

    def set_break(self, on: bool) -> None:
        try:
            fcntl.ioctl(self.fd, _TIOCSBRK if on else _TIOCCBRK)
        except OSError as exc:
            self._raise_if_gone(exc)
            raise SettingError(self.name, "break", on, os.strerror(exc.errno or 0)) from exc

    async def send_break(self, duration_s: float) -> None:
        """Hold BREAK for `duration_s` without blocking the loop."""
        self.set_break(True)
        try:
            await trio.sleep(duration_s)
        finally:
            if not self.closed:
                self.set_break(False)

    def modem_lines(self) -> int | None:
        """TIOCM_* bits, or None when the port has no modem lines (a pty)."""
        try:
            raw = fcntl.ioctl(self.fd, termios.TIOCMGET, _INT.pack(0))
        except OSError as exc:
            self._raise_if_gone(exc)
            return None
        value: int = _INT.unpack(raw)[0]
        return value

    @staticmethod
    def unsupported(exc: SettingError) -> bool:
        """True when `exc` says the tty has no such control (ENOTTY on a pty)."""
        cause = exc.__cause__
        return isinstance(cause, OSError) and cause.errno in _UNSUPPORTED

    def error_counters(self) -> tuple[int, int, int, int] | None:
        """(frame, overrun, parity, break) counts from TIOCGICOUNT, or None
        when the driver keeps none (a pty, most USB-serial adapters)."""
        try:
            raw = fcntl.ioctl(self.fd, _TIOCGICOUNT, bytes(_ICOUNT.size))
        except OSError as exc:
            self._raise_if_gone(exc)
            return None
        counts = _ICOUNT.unpack(raw)
        return counts[6], counts[7], counts[8], counts[9]

    def output_pending(self) -> int:
        """Bytes the driver has not sent yet (TIOCOUTQ); 0 when unknown."""
        try:
            raw = fcntl.ioctl(self.fd, termios.TIOCOUTQ, _INT.pack(0))
        except OSError as exc:
            self._raise_if_gone(exc)
            return 0
        value: int = _INT.unpack(raw)[0]
        return value

    def purge(self, rx: bool, tx: bool) -> None:
        queue = termios.TCIOFLUSH if rx and tx else termios.TCIFLUSH if rx else termios.TCOFLUSH
        try:
            termios.tcflush(self.fd, queue)
        except termios.error as exc:
            self._raise_if_gone(exc)

    # -- I/O ---------------------------------------------------------------

    async def wait_readable(self) -> None:
        """Until the fd is readable (data, or a hang-up that read_nowait reports)."""
        if self.closed:
            raise PortUnavailable(self.name, "port closed")
        await trio.lowlevel.wait_readable(self.fd)

    def read_nowait(self, max_bytes: int) -> bytes:
        """What the driver has now, up to `max_bytes` (b"" when nothing);
        PortUnavailable when the device vanished or hung up."""
        if self.closed:
            raise PortUnavailable(self.name, "port closed")
        try:
            data = os.read(self.fd, max_bytes)
        except BlockingIOError:
            return b""
        except OSError as exc:
            self._raise_if_gone(exc)
            raise PortUnavailable(self.name, f"read failed: {exc}") from exc
        if not data:  # a hung-up tty (pty master closed) reads EOF
            raise PortUnavailable(self.name, f"{self.path} hung up")
        return data

    def write_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the driver takes now (0 when its buffer is full);
        PortUnavailable when the device vanished."""
        if self.closed:
            raise PortUnavailable(self.name, "port closed")
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._raise_if_gone(exc)
            raise PortUnavailable(self.name, f"write failed: {exc}") from exc

    async def wait_writable(self) -> None:
        if self.closed:
            raise PortUnavailable(self.name, "port closed")
        await trio.lowlevel.wait_writable(self.fd)

    def _raise_if_gone(self, exc: BaseException) -> None:
        code = getattr(exc, "errno", None)
        if code is None and isinstance(exc, termios.error) and exc.args:
            code = exc.args[0]
        if code in _GONE:
            raise PortUnavailable(self.name, f"{self.path} vanished ({os.strerror(code)})") from exc

    def close(self, *, apply_close_lines: bool = True) -> None:
        """Set the configured DTR/RTS-on-close (best effort) and close the fd."""
        if self.closed:
            return
        if apply_close_lines and self.settings is not None:
            for on, setter in ((self.settings.dtr_on_close, self.set_dtr), (self.settings.rts_on_close, self.set_rts)):
                if on is not None:
                    try:
                        setter(on)
                    except (SettingError, PortUnavailable) as exc:
                        log.debug("%s: on close: %s", self.name, exc)
        self.closed = True
        try:
            trio.lowlevel.notify_closing(self.fd)  # wake tasks waiting on the fd
        except RuntimeError:  # not inside trio.run: nobody can be waiting
            pass
        try:
            self._serial.close()
        except (serial.SerialException, OSError) as exc:
            log.debug("%s: close: %s", self.name, exc)
