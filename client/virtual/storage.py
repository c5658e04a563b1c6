"""`MassStorageDevice`: a USB flash drive (Mass Storage, Bulk-Only Transport).

Owns the USB side of the drive: its descriptors (interface class 8,
subclass 6 = SCSI transparent, protocol 0x50 = Bulk-Only; one bulk IN, one
bulk OUT; high speed with 512-byte packets, or full speed with 64), the
class requests GET MAX LUN (0xFE) and Bulk-Only Mass Storage Reset (0xFF),
and the CBW -> data -> CSW state machine of the USB Mass Storage Class
Bulk-Only Transport rev 1.0 (section 5 for the wrappers, 6.6 for invalid
CBWs, 6.7 for the thirteen host/device data-length cases).  The SCSI
command set itself lives in `scsi.ScsiDisk`.

Residue handling (BOT 6.7.2/6.7.3): when the device has less data than the
host expects, it sends what it has and then STALLs the pipe (the host clears
the halt and reads the CSW); with ``stall_on_residue=False`` it ends the
data with a short packet instead (a zero-length one if the data ended on a
read boundary).  An invalid CBW stalls both pipes until a Bulk-Only Mass
Storage Reset (6.6.1); clearing the halts alone does not un-stall them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import Callable

from .descriptors import (
    ConfigSpec,
    DeviceIdentity,
    EndpointSpec,
    InterfaceSpec,
    Speed,
    TransferType,
    build_descriptor_set,
)
from .device import TYPE_CLASS, Setup, VirtualDevice
from .errors import Stall
from .scsi import GOOD, CheckCondition, ScsiDisk

__all__ = ["MassStorageDevice"]

log = logging.getLogger(__name__)

CBW_SIGNATURE = 0x43425355  # "USBC", BOT 5.1
CSW_SIGNATURE = 0x53425355  # "USBS", BOT 5.2
CBW = struct.Struct("<IIIBBB16s")
CSW = struct.Struct("<IIIB")
STATUS_FAILED = 0x01  # BOT table 5.3
STATUS_PHASE_ERROR = 0x02

REQ_GET_MAX_LUN = 0xFE  # BOT 3.2
REQ_MASS_STORAGE_RESET = 0xFF  # BOT 3.1

_CBW, _DATA_IN, _DATA_OUT, _ZLP, _CSW = "cbw", "data-in", "data-out", "zlp", "csw"


def _storage_config(speed: Speed) -> ConfigSpec:
    maxp = 512 if speed == Speed.HIGH else 64
    return ConfigSpec(
        value=1,
        max_power_ma=200,
        interfaces=(
            InterfaceSpec(
                number=0,
                alternate=0,
                interface_class=0x08,
                interface_subclass=0x06,
                interface_protocol=0x50,
                endpoints=(
                    EndpointSpec(0x81, TransferType.BULK, maxp),
                    EndpointSpec(0x02, TransferType.BULK, maxp),
                ),
            ),
        ),
    )


def default_serial(path: str | os.PathLike[str]) -> str:
    """24 upper-case hex digits derived from the image path (USB MSC
    requires at least 12 hex digits in iSerialNumber)."""
    digest = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()
    return digest[:24].upper()


class MassStorageDevice(VirtualDevice):
    """A USB flash drive backed by a disk image, read-write.

    ``MassStorageDevice(image, *, speed=Speed.HIGH, read_only=False,
    serial=None, vendor_id=0x1209, product_id=0x0001,
    manufacturer="redirgate", product="Virtual Flash Drive",
    stall_on_residue=True, name=None)``.  Endpoints: bulk IN 0x81, bulk OUT
    0x02.  ``disk`` is the `ScsiDisk`; ``close()`` flushes and closes it.
    """

    BULK_IN = 0x81
    BULK_OUT = 0x02
    #: a CBW's hook reads or writes the image file: transfers stay in threads
    inline_transfers = False

    def __init__(
        self,
        image: str | os.PathLike[str],
        *,
        speed: Speed = Speed.HIGH,
        read_only: bool = False,
        serial: str | None = None,
        vendor_id: int = 0x1209,
        product_id: int = 0x0001,
        manufacturer: str = "redirgate",
        product: str = "Virtual Flash Drive",
        stall_on_residue: bool = True,
        name: str | None = None,
    ) -> None:
        if speed not in (Speed.FULL, Speed.HIGH):
            raise ValueError(f"a flash drive runs at full or high speed, not {speed.name}")
        serial = serial or default_serial(image)
        identity = DeviceIdentity(
            vendor_id=vendor_id,
            product_id=product_id,
            bcd_device=0x0100,
            manufacturer=manufacturer,
            product=product,
            serial=serial,
        )
        other = Speed.FULL if speed == Speed.HIGH else Speed.HIGH
        descriptors = build_descriptor_set(identity, speed, [_storage_config(speed)], other, [_storage_config(other)])
        super().__init__(name or f"storage:{os.fspath(image)}", descriptors)
        self.disk = ScsiDisk(image, read_only=read_only, serial=serial)
        self.stall_on_residue = stall_on_residue
        self._reset_transport()

    def close(self) -> None:
        with self.lock:
            self.disk.close()

    # ------------------------------------------------------------ transport state

    def _reset_transport(self) -> None:
        self._state = _CBW
        self._needs_reset = False
        self._tag = 0
        self._status = GOOD
        self._residue = 0
        self._data = b""
        self._pos = 0
        self._stall_after = False
        self._out_wanted = 0  # bytes the device will take in DATA-OUT
        self._out_sink: Callable[[int, bytes], None] | None = None
        self._out_discard = False

    def on_reset(self) -> None:
        self._reset_transport()

    def on_configuration(self, value: int) -> None:
        self._reset_transport()

    def handle_control(self, setup: Setup, data: bytes) -> bytes | None:
        if setup.type == TYPE_CLASS and setup.index == 0:
            if setup.request == REQ_GET_MAX_LUN and setup.is_in and setup.value == 0:
                return b"\x00"  # one LUN
            if setup.request == REQ_MASS_STORAGE_RESET and not setup.is_in and setup.length == 0:
                # BOT 3.1: halts and data toggles survive; the host clears them.
                self._reset_transport()
                return None
        return super().handle_control(setup, data)

    def _phase_stall(self, reason: str) -> None:
        """BOT 6.6.1: stall both pipes until a Mass Storage Reset."""
        log.debug("%s: %s; stalling until reset", self.name, reason)
        self._needs_reset = True
        self.halt(self.BULK_IN)
        self.halt(self.BULK_OUT)
        raise Stall(reason)

    # ------------------------------------------------------------ bulk OUT

    def handle_out(self, ep: int, data: memoryview) -> int | None:
        if self._needs_reset:
            raise Stall("waiting for a Bulk-Only Mass Storage Reset")
        if self._state == _CBW:
            self._command(bytes(data))
            return len(data)
        if self._state == _DATA_OUT:
            return self._data_out(data)
        raise Stall(f"unexpected OUT data in state {self._state}")

    def _command(self, raw: bytes) -> None:
        if len(raw) != CBW.size:
            self._phase_stall(f"CBW of {len(raw)} bytes")
        sig, tag, length, flags, lun, cb_len, cb = CBW.unpack(raw)
        if sig != CBW_SIGNATURE or lun != 0 or not 1 <= cb_len <= 16 or flags & 0x7F:
            self._phase_stall("invalid or not meaningful CBW")
        self._tag, self._residue, self._status = tag, 0, GOOD
        self._data, self._pos, self._stall_after = b"", 0, False
        result = self.disk.execute(cb[:cb_len])
        d_in, d_out = len(result.data_in), result.data_out_length
        host_in = bool(flags & 0x80)
        # CSW status 1 for any SCSI status but GOOD (the host then asks REQUEST SENSE).
        self._status = GOOD if result.status == GOOD else STATUS_FAILED
        if length == 0:
            if d_in or d_out:  # cases 2, 3: Hn < Di, Hn < Do
                self._status = STATUS_PHASE_ERROR
            self._state = _CSW
        elif host_in:
            if d_out:  # case 10: Hi <> Do
                self._status, self._residue = STATUS_PHASE_ERROR, length
                self._begin_in(b"", length)
            elif d_in > length:  # case 7: Hi < Di
                self._status = STATUS_PHASE_ERROR
                self._begin_in(result.data_in[:length], length)
            else:  # cases 4, 5, 6
                self._residue = length - d_in
                self._begin_in(result.data_in, length)
        else:
            if d_in:  # case 8: Ho <> Di
                self._status, self._residue = STATUS_PHASE_ERROR, length
                self._stall_out()
            elif d_out == 0:  # case 9: Ho > Dn
                self._residue = length
                self._stall_out()
            elif d_out > length:  # case 13: Ho < Do, take the data, do nothing
                self._status = STATUS_PHASE_ERROR
                self._begin_out(length, None, discard=True)
            else:  # cases 11, 12
                self._residue = length - d_out
                self._begin_out(d_out, result.sink, discard=False)

    def _stall_out(self) -> None:
        self.halt(self.BULK_OUT)
        self._state = _CSW

    def _begin_out(self, wanted: int, sink: Callable[[int, bytes], None] | None, *, discard: bool) -> None:
        self._state = _DATA_OUT
        self._out_wanted = wanted
        self._out_sink = sink
        self._out_discard = discard
        self._pos = 0

    def _data_out(self, data: memoryview) -> int:
        take = min(len(data), self._out_wanted - self._pos)
        if take and not self._out_discard and self._status == GOOD and self._out_sink is not None:
            try:
                self._out_sink(self._pos, bytes(data[:take]))
            except CheckCondition as chk:
                self.disk.sense = chk.sense
                self._status = STATUS_FAILED  # keep taking the data
        self._pos += take
        if self._pos >= self._out_wanted:
            self._state = _CSW
            if self._residue:  # case 11: Ho > Do, stall the rest
                self.halt(self.BULK_OUT)
                if take < len(data):
                    raise Stall("host sent more data than the command takes")
        return take

    # ------------------------------------------------------------ bulk IN

    def _begin_in(self, data: bytes, host_length: int) -> None:
        self._data, self._pos = data, 0
        self._stall_after = len(data) < host_length and self.stall_on_residue
        if not data and self._stall_after:  # case 4 (Hi > Dn) or 10: stall at once
            self.halt(self.BULK_IN)
            self._state = _CSW
        elif not data:
            self._state = _ZLP
        else:
            self._state = _DATA_IN

    def handle_in(self, ep: int, size: int) -> bytes | None:
        if self._needs_reset:
            raise Stall("waiting for a Bulk-Only Mass Storage Reset")
        if self._state == _DATA_IN:
            chunk = self._data[self._pos : self._pos + size]
            self._pos += len(chunk)
            if self._pos >= len(self._data):
                self._data = b""
                if self._stall_after:
                    self.halt(self.BULK_IN)  # the next IN (the CSW read) stalls once
                    self._state = _CSW
                elif self._residue and len(chunk) == size:
                    self._state = _ZLP  # a full read can't have ended the transfer
                else:
                    self._state = _CSW
            return chunk
        if self._state == _ZLP:
            self._state = _CSW
            return b""
        if self._state == _CSW:
            self._state = _CBW
            csw = CSW.pack(CSW_SIGNATURE, self._tag, self._residue, self._status)
            return csw[:size]
        return None  # no command yet, or waiting for OUT data: NAK
