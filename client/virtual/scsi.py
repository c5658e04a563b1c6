"""`ScsiDisk`: the SCSI block-device command set of the virtual flash drive.

Owns the disk image (an fd used with os.pread/os.pwrite), the sense data,
and the meaning of each CDB (SPC-2/SBC-2 as USB flash drives implement it:
INQUIRY with VPD pages 0x00/0x80, TEST UNIT READY, REQUEST SENSE in fixed
format, READ CAPACITY 10/16, READ/WRITE 10/16, MODE SENSE 6/10, PREVENT
ALLOW MEDIUM REMOVAL, START STOP UNIT, SYNCHRONIZE CACHE 10, VERIFY 10,
READ FORMAT CAPACITIES).  Everything else is CHECK CONDITION with ILLEGAL
REQUEST / INVALID COMMAND OPERATION CODE.  Knows nothing about USB: the
Bulk-Only Transport in `storage` asks `execute` what a CDB wants to move
and feeds WRITE data to the returned sink.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CHECK_CONDITION", "GOOD", "CheckCondition", "ScsiDisk", "ScsiResult", "Sense"]

log = logging.getLogger(__name__)

GOOD = 0x00
CHECK_CONDITION = 0x02

BLOCK_SIZE = 512


@dataclass(frozen=True)
class Sense:
    """Sense key / additional sense code / qualifier (SPC-4 4.5.6, annex D)."""

    key: int
    asc: int
    ascq: int = 0


NO_SENSE = Sense(0x00, 0x00)
INVALID_OPCODE = Sense(0x05, 0x20)  # ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE
INVALID_FIELD = Sense(0x05, 0x24)  # ILLEGAL REQUEST, INVALID FIELD IN CDB
LBA_OUT_OF_RANGE = Sense(0x05, 0x21)  # ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE
WRITE_PROTECTED = Sense(0x07, 0x27)  # DATA PROTECT, WRITE PROTECTED
READ_ERROR = Sense(0x03, 0x11)  # MEDIUM ERROR, UNRECOVERED READ ERROR
WRITE_ERROR = Sense(0x03, 0x0C)  # MEDIUM ERROR, WRITE ERROR


class CheckCondition(Exception):
    """A command ends in CHECK CONDITION with this sense."""

    def __init__(self, sense: Sense) -> None:
        super().__init__(sense)
        self.sense = sense


@dataclass
class ScsiResult:
    """What a CDB wants: ``data_in`` to send (device intention Di =
    len(data_in)), or ``data_out_length`` bytes to receive into ``sink``
    (called as sink(offset, chunk); when it raises, the transport hands the
    `CheckCondition` to `ScsiDisk.sense` and reports the command failed)."""

    status: int
    data_in: bytes = b""
    data_out_length: int = 0
    sink: Callable[[int, bytes], None] | None = None


class ScsiDisk:
    """A direct-access block device on an image file, one LUN.

    ``ScsiDisk(path, read_only=False, vendor="Redirgat", product="Virtual
    Flash", revision="1.00", serial="...")``.  The image size need not be a
    multiple of 512; a trailing partial block is ignored.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        vendor: str = "Redirgat",
        product: str = "Virtual Flash",
        revision: str = "1.00",
        serial: str = "000000000001",
    ) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        self._fd = os.open(self.path, os.O_RDONLY if read_only else os.O_RDWR)
        self.blocks = os.fstat(self._fd).st_size // BLOCK_SIZE
        self.vendor, self.product, self.revision, self.serial = vendor, product, revision, serial
        self.sense = NO_SENSE
        self.prevent_removal = False
        self.commands: dict[int, int] = {}  # opcode -> times seen, for tests and logs

    def close(self) -> None:
        """Flush and close the image (idempotent)."""
        if self._fd >= 0:
            if not self.read_only:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def flush(self) -> None:
        if self._fd >= 0 and not self.read_only:
            os.fsync(self._fd)

    # ------------------------------------------------------------ dispatch

    def execute(self, cdb: bytes) -> ScsiResult:
        """Decode one CDB.  IN data is produced now; OUT data goes to sink."""
        op = cdb[0]
        self.commands[op] = self.commands.get(op, 0) + 1
        if op != 0x03:  # REQUEST SENSE reports the previous command's sense
            self.sense = NO_SENSE
        handler = _HANDLERS.get(op)
        try:
            if handler is None:
                raise CheckCondition(INVALID_OPCODE)
            if self._fd < 0:
                raise CheckCondition(Sense(0x02, 0x3A))  # NOT READY, MEDIUM NOT PRESENT
            return handler(self, cdb)
        except CheckCondition as chk:
            log.debug("SCSI %#04x -> CHECK CONDITION %s", op, chk.sense)
            self.sense = chk.sense
            return ScsiResult(CHECK_CONDITION)
        except (IndexError, struct.error) as exc:  # CDB shorter than its opcode needs
            log.debug("SCSI %#04x: malformed CDB %s: %s", op, cdb.hex(), exc)
            self.sense = INVALID_FIELD
            return ScsiResult(CHECK_CONDITION)

    # ------------------------------------------------------------ commands

    def _ok(self, data: bytes = b"", alloc: int | None = None) -> ScsiResult:
        return ScsiResult(GOOD, data if alloc is None else data[:alloc])

    def _inquiry(self, cdb: bytes) -> ScsiResult:
        alloc = struct.unpack_from(">H", cdb, 3)[0]
        if cdb[1] & 1:  # EVPD
            page = cdb[2]
            if page == 0x00:
                body = bytes((0x00, 0x80))
            elif page == 0x80:
                body = self.serial.encode("ascii")
            else:
                raise CheckCondition(INVALID_FIELD)
            return self._ok(bytes((0, page, 0, len(body))) + body, alloc)
        if cdb[2]:
            raise CheckCondition(INVALID_FIELD)
        data = (
            bytes(
                (
                    0x00,  # peripheral: direct access block device
                    0x80,  # RMB: removable medium, like USB sticks
                    0x02,  # version: SCSI-2, what most flash drives claim
                    0x02,  # response data format 2
                    31,  # additional length: 36-byte standard data
                    0,
                    0,
                    0,
                )
            )
            + _pad(self.vendor, 8)
            + _pad(self.product, 16)
            + _pad(self.revision, 4)
        )
        return self._ok(data, alloc)

    def _test_unit_ready(self, cdb: bytes) -> ScsiResult:
        return self._ok()

    def _request_sense(self, cdb: bytes) -> ScsiResult:
        s, self.sense = self.sense, NO_SENSE
        data = bytes((0x70, 0, s.key, 0, 0, 0, 0, 10, 0, 0, 0, 0, s.asc, s.ascq, 0, 0, 0, 0))
        return self._ok(data, cdb[4])

    def _read_capacity10(self, cdb: bytes) -> ScsiResult:
        last = min(self.blocks - 1, 0xFFFFFFFF) if self.blocks else 0
        return self._ok(struct.pack(">II", last, BLOCK_SIZE))

    def _service_action_in(self, cdb: bytes) -> ScsiResult:
        if cdb[1] & 0x1F != 0x10:  # only READ CAPACITY (16)
            raise CheckCondition(INVALID_FIELD)
        alloc = struct.unpack_from(">I", cdb, 10)[0]
        data = struct.pack(">QI", max(self.blocks - 1, 0), BLOCK_SIZE) + bytes(20)
        return self._ok(data, alloc)

    def _read_format_capacities(self, cdb: bytes) -> ScsiResult:
        alloc = struct.unpack_from(">H", cdb, 7)[0]
        data = struct.pack(">xxxBIBxH", 8, self.blocks, 0x02, BLOCK_SIZE)  # 0x02: formatted media
        return self._ok(data, alloc)

    def _range(self, lba: int, count: int) -> None:
        if lba + count > self.blocks:
            raise CheckCondition(LBA_OUT_OF_RANGE)

    def _read(self, lba: int, count: int) -> ScsiResult:
        self._range(lba, count)
        try:
            data = os.pread(self._fd, count * BLOCK_SIZE, lba * BLOCK_SIZE)
        except OSError as exc:
            log.warning("read of %s failed: %s", self.path, exc)
            raise CheckCondition(READ_ERROR) from exc
        return self._ok(data.ljust(count * BLOCK_SIZE, b"\0"))

    def _write(self, lba: int, count: int) -> ScsiResult:
        self._range(lba, count)
        if self.read_only:
            raise CheckCondition(WRITE_PROTECTED)
        base = lba * BLOCK_SIZE

        def sink(offset: int, chunk: bytes) -> None:
            try:
                os.pwrite(self._fd, chunk, base + offset)
            except OSError as exc:
                log.warning("write to %s failed: %s", self.path, exc)
                raise CheckCondition(WRITE_ERROR) from exc

        return ScsiResult(GOOD, data_out_length=count * BLOCK_SIZE, sink=sink)

    def _read10(self, cdb: bytes) -> ScsiResult:
        lba, count = struct.unpack_from(">IxH", cdb, 2)
        return self._read(lba, count)

    def _read16(self, cdb: bytes) -> ScsiResult:
        lba, count = struct.unpack_from(">QI", cdb, 2)
        return self._read(lba, count)

    def _write10(self, cdb: bytes) -> ScsiResult:
        lba, count = struct.unpack_from(">IxH", cdb, 2)
        return self._write(lba, count)

    def _write16(self, cdb: bytes) -> ScsiResult:
        lba, count = struct.unpack_from(">QI", cdb, 2)
        return self._write(lba, count)

    def _verify10(self, cdb: bytes) -> ScsiResult:
        lba, count = struct.unpack_from(">IxH", cdb, 2)
        if cdb[1] & 0x06:  # BYTCHK: host would send data to compare
            raise CheckCondition(INVALID_FIELD)
        self._range(lba, count)
        return self._ok()

    def _mode_pages(self, page: int) -> bytes:
        # Caching mode page (SBC-2 6.3.3): 0x08, length 0x12, WCE=0 (write-through).
        caching = bytes((0x08, 0x12)) + bytes(18)
        if page in (0x08, 0x3F):
            return caching
        if page == 0x00:
            return b""
        raise CheckCondition(INVALID_FIELD)

    def _mode_sense6(self, cdb: bytes) -> ScsiResult:
        pages = self._mode_pages(cdb[2] & 0x3F)
        wp = 0x80 if self.read_only else 0
        head = bytes((3 + len(pages), 0, wp, 0))
        return self._ok(head + pages, cdb[4])

    def _mode_sense10(self, cdb: bytes) -> ScsiResult:
        pages = self._mode_pages(cdb[2] & 0x3F)
        wp = 0x80 if self.read_only else 0
        head = struct.pack(">HBBxxH", 6 + len(pages), 0, wp, 0)
        return self._ok(head + pages, struct.unpack_from(">H", cdb, 7)[0])

    def _prevent_allow(self, cdb: bytes) -> ScsiResult:
        self.prevent_removal = bool(cdb[4] & 1)
        return self._ok()

    def _start_stop(self, cdb: bytes) -> ScsiResult:
        return self._ok()

    def _synchronize_cache(self, cdb: bytes) -> ScsiResult:
        try:
            self.flush()
        except OSError as exc:
            raise CheckCondition(WRITE_ERROR) from exc
        return self._ok()


def _pad(text: str, width: int) -> bytes:
    return text.encode("ascii", "replace")[:width].ljust(width, b" ")


_HANDLERS: dict[int, Callable[[ScsiDisk, bytes], ScsiResult]] = {
    0x00: ScsiDisk._test_unit_ready,
    0x03: ScsiDisk._request_sense,
    0x12: ScsiDisk._inquiry,
    0x1A: ScsiDisk._mode_sense6,
    0x1B: ScsiDisk._start_stop,
    0x1E: ScsiDisk._prevent_allow,
    0x23: ScsiDisk._read_format_capacities,
    0x25: ScsiDisk._read_capacity10,
    0x28: ScsiDisk._read10,
    0x2A: ScsiDisk._write10,
    0x2F: ScsiDisk._verify10,
    0x35: ScsiDisk._synchronize_cache,
    0x5A: ScsiDisk._mode_sense10,
    0x88: ScsiDisk._read16,
    0x8A: ScsiDisk._write16,
    0x9E: ScsiDisk._service_action_in,
}
