"""One open tty, driven through its file descriptor on the trio loop.

Owns opening (exclusive, non-blocking, through pyserial so every termios
detail - custom baud rates included - is pyserial's), applying and verifying
line settings, and the fd-level I/O: `read_some` waits with
`trio.lowlevel.wait_readable`, `write_all` loops on `os.write` +
`wait_writable` so no byte is ever dropped.  It is the one boundary where
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

__all__ = ["SerialPort", "MODEM_CTS", "MODEM_DSR", "MODEM_RI", "MODEM_CD"]

log = logging.getLogger(__name__)

_GONE = {errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF, errno.ENOENT}
_PARITY = {
    "N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD,
    "M": serial.PARITY_MARK, "S": serial.PARITY_SPACE,
}  # fmt: skip
_STOP = {1: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2: serial.STOPBITS_TWO}
_CSIZE = {5: termios.CS5, 6: termios.CS6, 7: termios.CS7, 8: termios.CS8}
_INT = struct.Struct("i")
MODEM_CTS, MODEM_DSR, MODEM_RI, MODEM_CD = termios.TIOCM_CTS, termios.TIOCM_DSR, termios.TIOCM_RI, termios.TIOCM_CD


class SerialPort:
    """An open tty (use `SerialPort.open`)."""

    def __init__(self, device: serial.Serial, path: str, name: str) -> None:
        self._serial = device
        self.path = path
        self.name = name
        self.fd: int = device.fileno()
        self.settings: LineSettings | None = None
        self.closed = False

    @classmethod
    def open(cls, selector: PortSelector, settings: LineSettings, *, name: str | None = None) -> SerialPort:
        """Resolve, open exclusively and non-blocking, apply `settings` (verified)."""
        label = name or str(selector)
        path = selector.resolve()
        try:
            device = serial.Serial(
                path, baudrate=settings.baud, exclusive=True, timeout=0, write_timeout=0,
                dsrdtr=False, rtscts=False, xonxoff=False, do_not_open=True,
            )  # fmt: skip
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
        driver changed or ignored is a SettingError naming it."""
        s = self._serial
        wanted = {
            "baud": ("baudrate", settings.baud),
            "data_bits": ("bytesize", settings.data_bits),
            "parity": ("parity", _PARITY[settings.parity]),
            "stop_bits": ("stopbits", _STOP[settings.stop_bits]),
            "rtscts": ("rtscts", settings.rtscts),
            "xonxoff": ("xonxoff", settings.xonxoff),
        }
        for setting, (attr, value) in wanted.items():
            if getattr(s, attr) == value and setting != "baud":
                continue
            try:
                setattr(s, attr, value)
            except (serial.SerialException, OSError, ValueError, termios.error) as exc:
                self._raise_if_gone(exc)
                raise SettingError(self.name, setting, getattr(settings, setting), str(exc)) from exc
        self._verify(settings)
        self.settings = settings

    def _verify(self, settings: LineSettings) -> None:
        try:
            _iflag, _oflag, cflag, _lflag, ispeed, _ospeed, _cc = termios.tcgetattr(self.fd)
        except termios.error as exc:
            self._raise_if_gone(exc)
            raise SettingError(self.name, "termios", None, str(exc)) from exc
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
            fcntl.ioctl(self.fd, termios.TIOCSBRK if on else termios.TIOCCBRK)
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

    def purge(self, rx: bool, tx: bool) -> None:
        queue = termios.TCIOFLUSH if rx and tx else termios.TCIFLUSH if rx else termios.TCOFLUSH
        try:
            termios.tcflush(self.fd, queue)
        except termios.error as exc:
            self._raise_if_gone(exc)

    # -- I/O ---------------------------------------------------------------

    async def read_some(self, max_bytes: int = 65536) -> bytes:
        """Bytes from the device; PortUnavailable when it vanished."""
        while True:
            if self.closed:
                raise PortUnavailable(self.name, "port closed")
            try:
                data = os.read(self.fd, max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd)
                continue
            except OSError as exc:
                self._raise_if_gone(exc)
                raise PortUnavailable(self.name, f"read failed: {exc}") from exc
            if not data:  # a hung-up tty reads EOF
                raise PortUnavailable(self.name, f"{self.path} hung up")
            return data

    async def write_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write every byte, waiting for room; PortUnavailable when it vanished."""
        view = memoryview(data)
        while view:
            if self.closed:
                raise PortUnavailable(self.name, "port closed")
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.fd)
                continue
            except OSError as exc:
                self._raise_if_gone(exc)
                raise PortUnavailable(self.name, f"write failed: {exc}") from exc
            view = view[n:]

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
        trio.lowlevel.notify_closing(self.fd)
        try:
            self._serial.close()
        except (serial.SerialException, OSError) as exc:
            log.debug("%s: close: %s", self.name, exc)
