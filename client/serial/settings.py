"""Line settings of one serial port: a frozen, validated dataclass.

Owns the names and ranges of every setting (baud, data bits, parity, stop
bits, flow control, DTR/RTS on open and close, break on connect) and their
parsing from "115200,8N1"-style strings.  Applying them to a tty is port.py's
job.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Final

from redirgate.client.serial.errors import SettingError

__all__ = ["MAX_BAUD", "MIN_BAUD", "PARITIES", "LineSettings"]

#: Linux termios reaches B4000000; anything outside is a typo or an attack.
MIN_BAUD: Final = 50
MAX_BAUD: Final = 4_000_000
#: pyserial's parity letters: none, even, odd, mark, space.
PARITIES: Final = ("N", "E", "O", "M", "S")
_FORMAT = re.compile(r"^(?P<baud>\d+)(?:[,:]?(?P<bits>[5-8])(?P<parity>[NEOMSneoms])(?P<stop>1\.5|1|2))?$")


@dataclass(frozen=True)
class LineSettings:
    """What the port is set to when it opens (and after a replug).

    `dtr_on_open`/`rts_on_open` etc.: True = assert, False = drop, None = leave.
    `break_on_connect_s`: a break of that length when a consumer connects (0 = none).
    """

    baud: int = 115200
    data_bits: int = 8
    parity: str = "N"
    stop_bits: float = 1
    rtscts: bool = False
    xonxoff: bool = False
    dtr_on_open: bool | None = None
    rts_on_open: bool | None = None
    dtr_on_close: bool | None = None
    rts_on_close: bool | None = None
    break_on_connect_s: float = 0.0

    def __post_init__(self) -> None:
        port = "settings"
        if isinstance(self.baud, bool) or not isinstance(self.baud, int) or not MIN_BAUD <= self.baud <= MAX_BAUD:
            raise SettingError(port, "baud", self.baud, f"must be an integer in {MIN_BAUD}..{MAX_BAUD}")
        if self.data_bits not in (5, 6, 7, 8):
            raise SettingError(port, "data_bits", self.data_bits, "must be 5, 6, 7 or 8")
        if self.parity not in PARITIES:
            raise SettingError(port, "parity", self.parity, f"must be one of {', '.join(PARITIES)}")
        if self.stop_bits not in (1, 1.5, 2):
            raise SettingError(port, "stop_bits", self.stop_bits, "must be 1, 1.5 or 2")
        if not 0 <= self.break_on_connect_s <= 5:
            raise SettingError(port, "break_on_connect_s", self.break_on_connect_s, "must be 0..5 seconds")

    @classmethod
    def parse(cls, text: str, **extra: Any) -> LineSettings:
        """ "115200", "9600,7E1", "9600:8N2", optionally followed by ser2net-style
        flags: ",rtscts", ",xonxoff", ",dtr=on|off", ",rts=on|off" (the lines
        on open).  Keyword settings override the text."""
        head, *flags = [part.strip() for part in text.strip().split(",")]
        if flags and re.fullmatch(r"[5-8][NEOMSneoms](?:1\.5|1|2)", flags[0]):
            head = f"{head},{flags.pop(0)}"
        match = _FORMAT.match(head)
        if match is None:
            raise SettingError("settings", "line", text, "expected BAUD[,BITS PARITY STOP] like 115200,8N1")
        values: dict[str, Any] = {"baud": int(match["baud"])}
        if match["bits"]:
            values["data_bits"] = int(match["bits"])
            values["parity"] = match["parity"].upper()
            stop = match["stop"]
            values["stop_bits"] = 1.5 if stop == "1.5" else int(stop)
        for flag in flags:
            name, _, state = flag.lower().partition("=")
            if name in ("rtscts", "xonxoff") and not state:
                values[name] = True
            elif name in ("dtr", "rts") and state in ("on", "off"):
                values[f"{name}_on_open"] = state == "on"
            else:
                raise SettingError("settings", "flag", flag, "expected rtscts, xonxoff, dtr=on|off or rts=on|off")
        values.update(extra)
        return cls(**values)

    def replace(self, **changes: Any) -> LineSettings:
        """A copy with some settings changed (validated)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        stop = "1.5" if self.stop_bits == 1.5 else str(int(self.stop_bits))
        flow = "".join((" rtscts" if self.rtscts else "", " xonxoff" if self.xonxoff else ""))
        return f"{self.baud},{self.data_bits}{self.parity}{stop}{flow}"
