"""LineSettings parsing/validation and port selectors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from redirgate.client.serial.errors import SelectorError, SettingError
from redirgate.client.serial.selector import PortSelector, parse_port_selector
from redirgate.client.serial.settings import LineSettings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("115200", LineSettings(baud=115200)),
        ("9600,7E1", LineSettings(baud=9600, data_bits=7, parity="E")),
        ("9600:8N2", LineSettings(baud=9600, stop_bits=2)),
        ("300,5o1.5", LineSettings(baud=300, data_bits=5, parity="O", stop_bits=1.5)),
        ("9600,8N1,rtscts,dtr=off", LineSettings(baud=9600, rtscts=True, dtr_on_open=False)),
        ("57600,xonxoff,rts=on", LineSettings(baud=57600, xonxoff=True, rts_on_open=True)),
    ],
)
def test_parse(text: str, expected: LineSettings) -> None:
    assert LineSettings.parse(text) == expected
    assert LineSettings.parse(expected.describe().replace(" ", ",")) == LineSettings(
        baud=expected.baud,
        data_bits=expected.data_bits,
        parity=expected.parity,
        stop_bits=expected.stop_bits,
        rtscts=expected.rtscts,
        xonxoff=expected.xonxoff,
    )


@pytest.mark.parametrize("text", ["", "fast", "9600,9N1", "9600,8X1", "9600,8N3", "49", "4000001", "9600,dtr=maybe"])
def test_parse_refuses(text: str) -> None:
    with pytest.raises(SettingError) as info:
        LineSettings.parse(text)
    assert info.value.reason


def test_port_selectors(tmp_path: Path) -> None:
    assert parse_port_selector("/dev/ttyUSB0") == PortSelector(path="/dev/ttyUSB0")
    assert parse_port_selector("0403:6001") == PortSelector(vid=0x0403, pid=0x6001)
    assert parse_port_selector("usb:0403:6001:A5XK3RJT") == PortSelector(vid=0x0403, pid=0x6001, serial="A5XK3RJT")
    assert parse_port_selector("by-id:usb-FTDI_x-if00") == PortSelector(by_id="usb-FTDI_x-if00")
    with pytest.raises(SelectorError):
        parse_port_selector("not a port")
    with pytest.raises(SelectorError) as info:
        PortSelector(path=str(tmp_path / "missing")).resolve()
    assert info.value.port.endswith("missing")
    link = tmp_path / "tty"
    os.symlink("/dev/null", link)
    assert PortSelector(path=str(link)).resolve() == str(link)
    with pytest.raises(SelectorError, match="no USB-serial adapter"):
        PortSelector(vid=0xDEAD, pid=0xBEEF).resolve()


def test_a_device_leaving_while_the_port_list_is_read_is_a_selector_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyserial's comports() raised TypeError when a USB tty vanished mid-read, and that ended the client."""
    from serial.tools import list_ports

    def vanishing() -> list[object]:
        raise TypeError("int() can't convert non-string with explicit base")

    monkeypatch.setattr(list_ports, "comports", vanishing)
    with pytest.raises(SelectorError, match="changed while it was read"):
        PortSelector(vid=0x1209, pid=0x7005).resolve()


def test_the_port_list_is_read_again_after_a_device_left(monkeypatch: pytest.MonkeyPatch) -> None:
    from serial.tools import list_ports
    from serial.tools.list_ports_common import ListPortInfo

    port = ListPortInfo("/dev/ttyACM7", skip_link_detection=True)
    port.vid, port.pid = 0x1209, 0x7005
    answers: list[object] = [OSError(2, "No such file or directory"), [port]]

    def flaky() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(list_ports, "comports", flaky)
    assert PortSelector(vid=0x1209, pid=0x7005).resolve() == "/dev/ttyACM7"
