"""RFC 2217 access server: pyserial 3.5's real rfc2217:// client (in a worker
thread) changes the pty's settings through it, and each change is checked on
the tty with termios.  Malformed telnet comes from the codec's client role
plus raw bytes; after each refusal the port is still open and unchanged and
the connection still carries data.

The Linux pty driver (6.x) refuses CS5-7 and PARENB with EINVAL, so data size
and parity changes are proven as *refusals*: the server answers with the
value in force, pyserial reports "remote rejected value", termios is unchanged.
"""

from __future__ import annotations

import logging
import termios
from typing import Any

import pytest
import serial
import trio
import trio.testing

from redirgate.client.serial.settings import LineSettings
from redirgate.proto.telnet import (
    NEED_DATA,
    ComPort,
    ComPortCommand,
    Data,
    Option,
    RemoteProtocolError,
    Role,
    TelnetConnection,
)
from tests.support.serial_lab import (
    connect,
    make_service,
    pty_pair,
    pyserial_rfc2217,
    read_master,
    serving,
    write_master,
)
from tests.support.waiting import until, until_async

#: pyserial 3.5's rfc2217 client calls Thread.setDaemon()/setName(), deprecated since 3.10.
pytestmark = pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning")

IAC, SB, SE, WILL, WONT, DO, DONT = 255, 250, 240, 251, 252, 253, 254
C = ComPortCommand


async def test_pyserial_settings_reach_the_tty() -> None:
    with pty_pair() as pty:
        service = make_service(pty.path, LineSettings(baud=9600))
        async with serving(service, "rfc2217") as port:
            async with pyserial_rfc2217(port, baudrate=57600) as remote:
                assert pty.speed() == termios.B57600  # set during pyserial's open
                for baud, flag in ((115200, termios.B115200), (1200, termios.B1200), (460800, termios.B460800)):
                    await remote.set("baudrate", baud)
                    assert pty.speed() == flag
                await remote.set("stopbits", serial.STOPBITS_TWO)
                assert pty.cflag() & termios.CSTOPB
                await remote.set("stopbits", serial.STOPBITS_ONE)
                assert not pty.cflag() & termios.CSTOPB
                await remote.set("rtscts", True)
                assert pty.cflag() & termios.CRTSCTS
                await remote.set("rtscts", False)
                assert not pty.cflag() & termios.CRTSCTS
                await remote.set("xonxoff", True)
                assert pty.iflag() & termios.IXON and pty.iflag() & termios.IXOFF
                await remote.set("xonxoff", False)
                assert not pty.iflag() & termios.IXON
                await remote.set("dtr", False)  # a pty has no modem lines: acknowledged
                await remote.set("rts", True)
                await remote.set("break_condition", True)
                assert service.session is not None and service.session.break_on
                await remote.set("break_condition", False)
                await remote.call(remote.client.reset_input_buffer)
                await remote.call(remote.client.reset_output_buffer)
                assert service.session.settings.describe() == "460800,8N1"
            # consumer gone: the configured settings come back
            await until(lambda: service.session is None)
            assert pty.speed() == termios.B9600


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("bytesize", serial.SEVENBITS),
        ("bytesize", serial.FIVEBITS),
        ("parity", serial.PARITY_EVEN),
        ("parity", serial.PARITY_ODD),
        ("baudrate", 10_000_000),
    ],
)
async def test_refused_settings_keep_the_port_correct(attribute: str, value: object, caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="redirgate.client.serial"):
        with pty_pair() as pty:
            service = make_service(pty.path)
            async with serving(service, "rfc2217") as port:
                async with pyserial_rfc2217(port, baudrate=19200) as remote:
                    before = termios.tcgetattr(pty.master)
                    with pytest.raises(ValueError, match="remote rejected value"):
                        await remote.set(attribute, value)
                    assert termios.tcgetattr(pty.master) == before
                    assert pty.cflag() & termios.CSIZE == termios.CS8 and not pty.cflag() & termios.PARENB
                    assert service.port is not None and service.opened_count == 1
                    await remote.call(remote.client.write, b"still\xffhere")
                    assert await read_master(pty, 10) == b"still\xffhere"
                    await write_master(pty, b"\xff\x00ok")
                    assert await remote.call(remote.client.read, 4) == b"\xff\x00ok"
    assert any("refused" in r.getMessage() for r in caplog.records)


async def test_bytes_through_rfc2217_all_values_and_a_megabyte() -> None:
    with pty_pair() as pty:
        async with serving(make_service(pty.path, tx_bytes=8192), "rfc2217") as port:
            async with pyserial_rfc2217(port, baudrate=115200) as remote:
                data = bytes(range(256)) * 4096  # 1 MiB, a quarter of it 0xFF (doubled on the wire)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(remote.call, remote.client.write, data)
                    assert await read_master(pty, len(data)) == data
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(write_master, pty, data)
                    got = bytearray()
                    while len(got) < len(data):
                        got += await remote.call(remote.client.read, len(data) - len(got))
                    assert bytes(got) == data


async def test_modem_state_is_polled_and_notified(monkeypatch: Any) -> None:
    """A pty has no modem lines, so the port's TIOCMGET is replaced by a
    value the test flips; the server must notice and notify pyserial."""
    with pty_pair() as pty:
        service = make_service(pty.path)
        async with serving(service, "rfc2217") as port:
            await until(lambda: service.port is not None)
            held = termios.TIOCM_DTR | termios.TIOCM_RTS  # what pyserial's open sets and checks
            lines = {"value": held | termios.TIOCM_CTS | termios.TIOCM_DSR}
            monkeypatch.setattr(service.port, "modem_lines", lambda: lines["value"])
            async with pyserial_rfc2217(port, "?poll_modem") as remote:
                assert await remote.get("cts") and await remote.get("dsr")
                assert not await remote.get("cd") and not await remote.get("ri")
                lines["value"] = held | termios.TIOCM_CD | termios.TIOCM_RI
                # the service polls the lines every 0.1 s and tells pyserial, which
                # answers from its own cache for 0.3 s: ask until the change shows
                await until_async(lambda: remote.get("cd"), "pyserial to see CD")
                assert await remote.get("ri")
                assert not await remote.get("cts")


# -- malformed input, from the codec's client role and raw bytes ---------------


class RawClient:
    """A telnet/RFC 2217 client made of the codec, for input pyserial never sends."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = TelnetConnection(Role.CLIENT, accept_local=(0, 3, 44), accept_remote=(0, 1, 3, 44))
        self.data = bytearray()
        self.comport: list[ComPort] = []

    async def open(self) -> None:
        await self.stream.send_all(self.conn.request(Option.COM_PORT, local=True) + self.conn.request(0, local=True))
        await self.pump_until(lambda: self.conn.comport_active)

    async def pump_until(self, done: Any) -> None:
        while not done():
            chunk = await self.stream.receive_some(65536)
            assert chunk, "server closed the connection"
            self.conn.receive_data(chunk)
            while True:
                try:
                    event = self.conn.next_event()
                except RemoteProtocolError as exc:
                    raise AssertionError(f"server sent malformed telnet: {exc}") from exc
                if event is NEED_DATA:
                    break
                if isinstance(event, Data):
                    self.data += event.data
                elif isinstance(event, ComPort):
                    self.comport.append(event)
            if out := self.conn.data_to_send():
                await self.stream.send_all(out)

    async def ask(self, command: ComPortCommand, value: Any) -> ComPort:
        seen = len([e for e in self.comport if e.command == command])
        await self.stream.send_all(self.conn.send_comport(command, value))
        await self.pump_until(lambda: len([e for e in self.comport if e.command == command]) > seen)
        return [e for e in self.comport if e.command == command][-1]


GARBAGE = [
    pytest.param(bytes([IAC, DO, 99, IAC, WILL, 98]), id="unknown-options"),
    pytest.param(bytes([IAC, SB, 99, 1, 2, 3, IAC, SE]), id="unknown-subnegotiation"),
    pytest.param(bytes([IAC, SB, 44, 1, 0, 0, IAC, WILL, 3]), id="unterminated-comport-sb"),
    # the first SB is lost, the second (38400, the baud in force) is carried out
    pytest.param(bytes([IAC, SB, 44, 5, IAC, SB, 44, 1, 0, 0, 0x96, 0x00, IAC, SE]), id="sb-inside-sb"),
    pytest.param(bytes([IAC, SB, 44, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, IAC, SE]), id="absurd-baud"),
    pytest.param(bytes([IAC, SB, 44, 2, 3, IAC, SE]), id="bad-datasize"),
    pytest.param(bytes([IAC, SB, 44, 13, IAC, SE]), id="unknown-comport-command"),
    pytest.param(bytes([IAC, SB, 44, 1, 0, 0, IAC, SE]), id="short-baud"),
    pytest.param(bytes([IAC, SB, 24]) + b"A" * 1000 + bytes([IAC, SE]), id="overlong-sb"),
    pytest.param(bytes([IAC, 0x01, IAC, 0xF1, IAC, SE, IAC, 0xF3]), id="stray-commands-and-break"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_malformed_telnet_is_refused_and_the_connection_goes_on(garbage: bytes, caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="redirgate.client.serial"):
        with pty_pair() as pty:
            service = make_service(pty.path, LineSettings(baud=38400))
            async with serving(service, "rfc2217") as port:
                stream = await connect(port)
                async with stream:
                    client = RawClient(stream)
                    await client.open()
                    before = termios.tcgetattr(pty.master)
                    await stream.send_all(garbage + b"data")
                    # whatever the garbage was, "data" (or its tail, after a lost SB) reaches the port ...
                    tail = await read_master(pty, 4)
                    assert tail == b"data"
                    # ... the settings are untouched and the server still answers
                    assert termios.tcgetattr(pty.master) == before
                    assert (await client.ask(C.SET_BAUDRATE, 0)).value == 38400
                    await write_master(pty, b"\xffback")
                    await client.pump_until(lambda: bytes(client.data).endswith(b"\xffback"))
                    assert service.port is not None and service.opened_count == 1
    messages = [r.getMessage() for r in caplog.records]
    if b"\xf3" not in garbage:
        assert any("refused" in m or "skipped" in m for m in messages), messages


async def test_comport_queries_masks_signature_and_absurd_values() -> None:
    with pty_pair() as pty:
        service = make_service(pty.path, LineSettings(baud=4800, stop_bits=2))
        async with serving(service, "rfc2217") as port:
            stream = await connect(port)
            async with stream:
                client = RawClient(stream)
                await client.open()
                assert (await client.ask(C.SET_BAUDRATE, 0)).value == 4800
                assert (await client.ask(C.SET_BAUDRATE, 0xFFFFFFFF)).value == 4800  # refused
                assert (await client.ask(C.SET_BAUDRATE, 1)).value == 4800  # below MIN_BAUD
                assert pty.speed() == termios.B4800
                assert (await client.ask(C.SET_DATASIZE, 0)).value == 8
                assert (await client.ask(C.SET_PARITY, 0)).value == 1  # NONE
                assert (await client.ask(C.SET_STOPSIZE, 0)).value == 2
                assert (await client.ask(C.SET_STOPSIZE, 3)).value == 3  # 1.5 = CSTOPB on Linux
                assert pty.cflag() & termios.CSTOPB
                assert (await client.ask(C.SET_CONTROL, 0)).value == 1  # no flow control
                assert (await client.ask(C.SET_CONTROL, 16)).value == 16  # inbound hardware
                assert pty.cflag() & termios.CRTSCTS
                assert (await client.ask(C.SET_CONTROL, 19)).value == 3  # DSR flow: refused, hardware stays
                assert (await client.ask(C.SET_CONTROL, 4)).value == 6  # BREAK off
                assert (await client.ask(C.SET_LINESTATE_MASK, 0x60)).value == 0x60
                assert (await client.ask(C.SET_MODEMSTATE_MASK, 0x0F)).value == 0x0F
                assert (await client.ask(C.PURGE_DATA, 3)).value == 3
                assert (await client.ask(C.SIGNATURE, b"")).value == b"redirgate test-port"
                # line state: TX empty bits, as the mask asked (sent once it is set)
                await client.pump_until(
                    lambda: any(e.command == C.NOTIFY_LINESTATE and e.value == 0x60 for e in client.comport)
                )
                # flow suspend holds device data back until resume
                await stream.send_all(client.conn.send_comport(C.FLOWCONTROL_SUSPEND, None))
                await client.ask(C.SET_BAUDRATE, 0)  # answered in order: the suspend is in force
                await write_master(pty, b"held")
                await until(lambda: pty.unread_by_device() == 0, "the service to read the bytes")
                await trio.testing.wait_all_tasks_blocked()  # and to do all it will do with them
                await client.ask(C.SET_BAUDRATE, 0)  # held bytes would have come before this answer
                assert client.data == b""
                await stream.send_all(client.conn.send_comport(C.FLOWCONTROL_RESUME, None))
                await client.pump_until(lambda: client.data == b"held")
