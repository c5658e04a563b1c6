"""The device layer of client/parallel: ioctl numbers, status decoding, opening
and writing real stand-ins (file, FIFO, pty, /dev/null) and every error path
that needs no printer: ENOENT, EACCES, ENXIO (a FIFO nobody reads), EPIPE,
ENOTTY (status unknown; not a ppdev node)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from redirgate.client.parallel import ppdev
from redirgate.client.parallel.errors import NotAParport, PortUnavailable, PrinterNotReady
from redirgate.client.parallel.ppdev import Parport
from redirgate.client.parallel.printer import LPGETSTATUS, PrinterPort
from redirgate.client.parallel.status import PrinterStatus, StatusBits
from tests.support.parallel_lab import BUSY, OFFLINE, PAPER_OUT, READY, STUCK_PAPER_OUT, EmulatedLp, LpState, fifo
from tests.support.system import require

PPDEV_H = Path("/usr/include/linux/ppdev.h")
LP_H = Path("/usr/include/linux/lp.h")


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """asm-generic/ioctl.h _IOC: dir<<30 | size<<16 | type<<8 | nr (_IOC_WRITE=1, _IOC_READ=2)."""
    return direction << 30 | size << 16 | ord(kind) << 8 | nr


IOCTLS = {
    "PPCLAIM": (ppdev.PPCLAIM, _ioc(0, "p", 0x8B, 0)),
    "PPRELEASE": (ppdev.PPRELEASE, _ioc(0, "p", 0x8C, 0)),
    "PPEXCL": (ppdev.PPEXCL, _ioc(0, "p", 0x8F, 0)),
    "PPWDATA": (ppdev.PPWDATA, _ioc(1, "p", 0x86, 1)),
    "PPRSTATUS": (ppdev.PPRSTATUS, _ioc(2, "p", 0x81, 1)),
    "PPRCONTROL": (ppdev.PPRCONTROL, _ioc(2, "p", 0x83, 1)),
    "PPWCONTROL": (ppdev.PPWCONTROL, _ioc(1, "p", 0x84, 1)),
}


@pytest.mark.parametrize("name", sorted(IOCTLS))
def test_ppdev_numbers_follow_the_ioc_encoding(name: str) -> None:
    ours, encoded = IOCTLS[name]
    assert ours == encoded, f"{name}: {ours:#x} != {encoded:#x}"


def test_ioctl_numbers_match_the_installed_headers() -> None:
    require("linux-libc-dev headers", PPDEV_H.is_file() and LP_H.is_file(), f"{PPDEV_H} or {LP_H} missing")
    sizes = {"unsigned char": 1, "int": 4}
    text = PPDEV_H.read_text()
    for name, (ours, _) in IOCTLS.items():
        m = re.search(rf"#define\s+{name}\s+_IO([RW]?)\(PP_IOCTL,\s*(0x[0-9a-fA-F]+)(?:,\s*([a-z ]+))?\)", text)
        assert m, name
        direction = {"": 0, "W": 1, "R": 2}[m.group(1)]
        assert ours == _ioc(direction, "p", int(m.group(2), 16), sizes.get((m.group(3) or "").strip(), 0)), name
    m = re.search(r"#define\s+LPGETSTATUS\s+(0x[0-9a-fA-F]+)", LP_H.read_text())
    assert m and int(m.group(1), 16) == LPGETSTATUS
    lp = LP_H.read_text()
    for bit, macro in [
        (StatusBits.ERROR, "LP_PERRORP"),
        (StatusBits.SELECT, "LP_PSELECD"),
        (StatusBits.PAPEROUT, "LP_POUTPA"),
        (StatusBits.ACK, "LP_PACK"),
        (StatusBits.BUSY, "LP_PBUSY"),
    ]:
        m = re.search(rf"#define\s+{macro}\s+(0x[0-9a-fA-F]+)", lp)
        assert m and int(m.group(1), 16) == bit, macro


@pytest.mark.parametrize(
    ("raw", "problem", "describe"),
    [
        (None, None, "status unknown"),
        (int(READY), None, "printer ready (status 0xd8)"),
        (int(BUSY), None, "printer busy (status 0x58)"),
        (int(PAPER_OUT), "printer out of paper", "printer out of paper (status 0x70)"),
        (int(OFFLINE), "printer offline (or switched off)", "printer offline (or switched off) (status 0x40)"),
        (int(STUCK_PAPER_OUT), "printer out of paper", None),
        (int(READY & ~StatusBits.ERROR), "printer reports an error (or is switched off)", None),
        (int(PAPER_OUT & ~StatusBits.SELECT), "printer out of paper", None),  # lp.c checks paper first
        (0xD9, None, None),  # QEMU's synthesised register after reset: fine
    ],
)
def test_status_register_decoding(raw: int | None, problem: str | None, describe: str | None) -> None:
    status = PrinterStatus(raw)
    assert status.problem == problem
    assert status.known is (raw is not None)
    if describe is not None:
        assert status.describe() == describe


# The USB printer class's GET_PORT_STATUS byte as usblp's LPGETSTATUS returns it
# (USB Printer Class 1.1, 4.2.2): 0x08 not error, 0x10 selected, 0x20 paper
# empty, bits 6-7 reserved.  The same byte read as a parallel port's register
# (/dev/lpN, ppdev) means something else where BUSY (0x80, inverted) is concerned.
@pytest.mark.parametrize(
    ("raw", "usb_describe", "lp_describe"),
    [
        (0x18, "printer ready (status 0x18)", "printer busy (status 0x18)"),  # a ready USB printer
        (0x98, "printer ready (status 0x98)", "printer ready (status 0x98)"),  # reserved bit 7 set
        (0x58, "printer ready (status 0x58)", "printer busy (status 0x58)"),  # reserved bit 6 set
        (0x38, "printer out of paper (status 0x38)", "printer out of paper (status 0x38)"),
        (0x08, "printer offline (or switched off) (status 0x08)", "printer offline (or switched off) (status 0x08)"),
        (0x10, "printer reports an error (or is switched off) (status 0x10)", None),
        (0x00, "printer offline (or switched off) (status 0x00)", None),
    ],
)
def test_usb_printer_status_is_not_a_parallel_register(raw: int, usb_describe: str, lp_describe: str | None) -> None:
    usb = PrinterStatus(raw, usb=True)
    assert usb.describe() == usb_describe and not usb.busy and not usb.acknowledging
    if lp_describe is not None:
        assert PrinterStatus(raw).describe() == lp_describe


class _StatusOnly(PrinterPort):
    """A port whose LPGETSTATUS answers `raw` (no printer here)."""

    raw = 0

    def _os_status(self) -> int:
        return self.raw


def test_a_usblp_port_reads_usb_status_and_an_lp_port_the_register(tmp_path: Path) -> None:
    node = tmp_path / "lp0"
    node.write_bytes(b"")
    port = _StatusOnly.open(str(node), name="printer")
    try:
        assert not port.usb_status
        port.raw = 0x18
        assert port.status().describe() == "printer busy (status 0x18)"  # /dev/lpN: parallel meaning
        port.usb_status = True  # what open() sets for major 180 (/dev/usb/lpN)
        assert port.status().describe() == "printer ready (status 0x18)"
    finally:
        port.close()


def test_only_usblp_nodes_get_usb_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """open() decides by the node's major: 180 (usblp) is USB, 6 (lp) is not."""
    from redirgate.client.parallel import printer

    node = tmp_path / "lp0"
    node.write_bytes(b"")
    real_stat = os.stat
    for major, usb in ((printer.USBLP_MAJOR, True), (printer.LP_MAJOR, False)):

        def fake_stat(path: object, *args: object, major: int = major, **kw: object) -> os.stat_result:
            info = real_stat(path, *args, **kw)  # type: ignore[arg-type]  # os.stat's own arguments, passed on
            if str(path) != str(node):
                return info
            fields = list(info)
            fields[0] = 0o20666  # a character device
            return os.stat_result((*fields[:10],), {"st_rdev": os.makedev(major, 0)})

        monkeypatch.setattr(printer.os, "stat", fake_stat)
        port = _StatusOnly.open(str(node), name="printer")
        try:
            assert port.usb_status is usb
        finally:
            port.close()


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """Drop the effective uid (root bypasses file modes), restored afterwards."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_open_missing_device_names_port_and_reason(tmp_path: Path) -> None:
    with pytest.raises(PortUnavailable) as info:
        PrinterPort.open(str(tmp_path / "lp9"), name="printer")
    assert info.value.port == "printer" and "no such device" in info.value.reason
    with pytest.raises(PortUnavailable, match="no such device"):
        Parport.open(str(tmp_path / "parport9"))


def test_open_without_permission_is_eaccess(tmp_path: Path) -> None:
    node = tmp_path / "lp0"
    node.write_bytes(b"")
    node.chmod(0)
    tmp_path.chmod(0o755)
    with as_nobody():
        with pytest.raises(PortUnavailable) as lp_info:
            PrinterPort.open(str(node), name="printer")
        with pytest.raises(PortUnavailable) as pp_info:
            Parport.open(str(node), name="pp")
    for info in (lp_info, pp_info):
        assert "permission denied" in info.value.reason and "lp" in info.value.reason
        assert isinstance(info.value.__cause__, PermissionError)


def test_fifo_nobody_reads_is_unavailable_then_opens(tmp_path: Path) -> None:
    with fifo(tmp_path / "lp0", reader=False) as f:
        with pytest.raises(PortUnavailable, match="nobody reads") as info:
            PrinterPort.open(str(f.path), name="printer")
        assert info.value.__cause__ is not None and info.value.__cause__.errno == errno.ENXIO  # type: ignore[attr-defined]  # the cause is open()'s OSError
        f.open_reader()
        port = PrinterPort.open(str(f.path), name="printer")
        try:
            assert port.kind == "other" and port.pollable
            assert not port.status().known  # ENOTTY on LPGETSTATUS: status unknown
            assert port.write_nowait(b"hello") == 5
            assert f.read_available() == b"hello"
        finally:
            port.close()


def test_full_fifo_takes_nothing_and_drops_nothing(tmp_path: Path) -> None:
    with fifo(tmp_path / "lp0") as f:
        port = PrinterPort.open(str(f.path), name="printer")
        try:
            block = bytes(range(256)) * 256
            sent = bytearray()
            while (n := port.write_nowait(block)) > 0:
                sent += block[:n]
            assert port.write_nowait(b"more") == 0  # EAGAIN: nothing taken, no error
            got = bytearray()
            while chunk := f.read_available():
                got += chunk
            assert bytes(got) == bytes(sent)
            f.close_reader()
            with pytest.raises(PortUnavailable, match="reader went away"):
                port.write_nowait(b"x")
            assert port.gone_reason is not None
        finally:
            port.close()


@pytest.mark.parametrize("kind", ["file", "pty", "devnull"])
def test_non_printer_nodes_have_status_unknown_and_are_written(kind: str, tmp_path: Path) -> None:
    closers = []
    if kind == "file":
        path = tmp_path / "printed.out"
        path.write_bytes(b"before;")
    elif kind == "pty":
        master, slave = os.openpty()
        closers += [master, slave]
        path = Path(os.ttyname(slave))
    else:
        path = Path("/dev/null")
    try:
        port = PrinterPort.open(str(path), name="printer")
        try:
            assert port.status().describe() == "status unknown" and not port.status_known
            assert port.write_nowait(b"page") == 4
            if kind == "file":
                assert path.read_bytes() == b"before;page"  # appended, never overwritten
                assert not port.pollable
            if kind == "pty":
                assert os.read(master, 10) == b"page"
        finally:
            port.close()
        port.close()  # idempotent
    finally:
        for fd in closers:
            os.close(fd)


@pytest.mark.parametrize("kind", ["file", "pty", "fifo", "devnull"])
def test_parport_on_a_non_ppdev_node_is_not_a_parport(kind: str, tmp_path: Path) -> None:
    closers: list[int] = []
    if kind == "file":
        path = tmp_path / "parport0"
        path.write_bytes(b"")
    elif kind == "pty":
        master, slave = os.openpty()
        closers += [master, slave]
        path = Path(os.ttyname(slave))
    elif kind == "fifo":
        path = tmp_path / "parport0"
        os.mkfifo(path)
        closers.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    else:
        path = Path("/dev/null")
    before = len(os.listdir("/proc/self/fd"))
    try:
        with pytest.raises(NotAParport) as info:
            Parport.open(str(path), name="pp0")
        assert info.value.port == "pp0" and "ENOTTY" in info.value.reason and "PPCLAIM" in info.value.reason
        assert len(os.listdir("/proc/self/fd")) == before  # the fd was closed again
    finally:
        for fd in closers:
            os.close(fd)


def test_parport_data_byte_is_checked() -> None:
    port = Parport(-1, "/dev/parport0", "pp0")
    with pytest.raises(ValueError):
        port.write_data(256)
    with pytest.raises(PortUnavailable, match="closed"):
        port.read_status()


@pytest.mark.parametrize(
    ("register", "error", "reason"),
    [
        (PAPER_OUT, PrinterNotReady, "printer out of paper"),
        (OFFLINE, PrinterNotReady, "printer offline (or switched off)"),
        (READY & ~StatusBits.ERROR, PrinterNotReady, "printer reports an error (or is switched off)"),
        (READY & ~StatusBits.ERROR & ~StatusBits.SELECT, PrinterNotReady, "printer offline (or switched off)"),
    ],
)
def test_lp_write_errors_become_typed_errors(
    register: int, error: type[Exception], reason: str, tmp_path: Path
) -> None:
    state = LpState(register)
    with fifo(tmp_path / "lp0") as f:
        port = state.open_port(str(f.path), name="printer")
        try:
            with pytest.raises(PrinterNotReady) as info:
                port.write_nowait(b"job")
            assert info.value.port == "printer" and info.value.reason == reason
            assert info.value.status is not None and info.value.status.raw == int(register)
            assert str(info.value) == f"printer: {reason}"
            state.register = int(BUSY)
            assert port.write_nowait(b"job") == 0  # busy: nothing taken, not an error
            state.register = int(READY)
            assert port.write_nowait(b"job") == 3
            assert f.read_available() == b"job"
        finally:
            port.close()
    assert isinstance(port, EmulatedLp)
