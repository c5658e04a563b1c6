"""The telnet / RFC 2217 codec: escaping, negotiation, subnegotiation, errors.

Peers are real TelnetConnection objects in the other role, plus the byte
sequences pyserial's RFC 2217 client and ser2net send (facts doc section 3/4).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redirgate.proto.telnet import (
    CLOSED,
    NEED_DATA,
    Command,
    ComPort,
    ComPortCommand,
    ComPortValueError,
    Data,
    LocalProtocolError,
    Option,
    OptionChanged,
    RemoteProtocolError,
    Role,
    Subnegotiation,
    SubnegotiationError,
    TelnetConnection,
)

IAC, SB, SE, WILL, WONT, DO, DONT = 255, 250, 240, 251, 252, 253, 254
ALL = (Option.BINARY, Option.SGA, Option.COM_PORT)


def drain(conn: TelnetConnection) -> list[object]:
    events: list[object] = []
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            events.append(exc)
            continue
        if event is NEED_DATA or event is CLOSED:
            events.append(event)
            return events
        events.append(event)


def data_of(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data))


def agreed_pair() -> tuple[TelnetConnection, TelnetConnection]:
    server = TelnetConnection(Role.SERVER, accept_local=ALL, accept_remote=ALL)
    client = TelnetConnection(Role.CLIENT, accept_local=ALL, accept_remote=ALL)
    offer = client.request(Option.COM_PORT, local=True) + client.request(Option.BINARY, local=True)
    server.receive_data(offer)
    drain(server)
    client.receive_data(server.data_to_send())
    drain(client)
    assert server.comport_active and client.comport_active
    assert client.data_to_send() == b""  # answers are never answered
    return server, client


@given(st.binary(max_size=600), st.integers(1, 17))
@settings(max_examples=200, deadline=None)
def test_data_roundtrip_any_chunking(payload: bytes, chunk: int) -> None:
    conn = TelnetConnection(Role.SERVER)
    wire = conn.send_data(payload)
    assert wire.count(b"\xff") == 2 * payload.count(b"\xff")
    got = bytearray()
    for i in range(0, len(wire), chunk):
        conn.receive_data(wire[i : i + chunk])
        got += data_of(drain(conn))
    assert bytes(got) == payload


def test_all_256_values_and_eof() -> None:
    conn = TelnetConnection(Role.CLIENT)
    conn.receive_data(conn.send_data(bytes(range(256)) * 3))
    conn.receive_data(b"")
    events = drain(conn)
    assert data_of(events) == bytes(range(256)) * 3
    assert events[-1] is CLOSED


def test_negotiation_accepts_and_refuses() -> None:
    server = TelnetConnection(Role.SERVER, accept_local=[Option.BINARY], accept_remote=[Option.COM_PORT])
    # pyserial's opening: DO ECHO, WILL SGA, DO SGA, DO COM-PORT, WILL COM-PORT
    server.receive_data(bytes([IAC, DO, 1, IAC, WILL, 3, IAC, DO, 3, IAC, DO, 44, IAC, WILL, 44]))
    events = drain(server)
    assert OptionChanged(44, False, True) in events
    assert server.data_to_send() == bytes([IAC, WONT, 1, IAC, DONT, 3, IAC, WONT, 3, IAC, WONT, 44, IAC, DO, 44])
    assert server.comport_active
    # repeating an agreed WILL produces no answer (no loops)
    server.receive_data(bytes([IAC, WILL, 44]))
    drain(server)
    assert server.data_to_send() == b""
    # peer turns it off: we confirm once
    server.receive_data(bytes([IAC, WONT, 44]))
    assert OptionChanged(44, False, False) in drain(server)
    assert server.data_to_send() == bytes([IAC, DONT, 44])


def test_request_then_answer_settles_without_reply() -> None:
    conn = TelnetConnection(Role.SERVER, accept_local=ALL)
    assert conn.request(Option.BINARY, local=True) == bytes([IAC, WILL, 0])
    assert conn.request(Option.BINARY, local=True) == b""  # already pending
    conn.receive_data(bytes([IAC, DO, 0]))
    assert drain(conn)[0] == OptionChanged(0, True, True)
    assert conn.data_to_send() == b""
    assert conn.request(Option.BINARY, local=True, enable=False) == bytes([IAC, WONT, 0])
    conn.receive_data(bytes([IAC, DONT, 0]))
    assert drain(conn)[0] == OptionChanged(0, True, False)
    assert not conn.local_enabled(0)


@pytest.mark.parametrize(
    ("command", "value"),
    [
        (ComPortCommand.SET_BAUDRATE, 115200),
        (ComPortCommand.SET_BAUDRATE, 0xFFFFFFFF),  # 0xFF bytes inside SB are doubled
        (ComPortCommand.SET_BAUDRATE, 0),
        (ComPortCommand.SET_DATASIZE, 7),
        (ComPortCommand.SET_PARITY, 3),
        (ComPortCommand.SET_STOPSIZE, 2),
        (ComPortCommand.SET_CONTROL, 19),
        (ComPortCommand.NOTIFY_LINESTATE, 0x60),
        (ComPortCommand.NOTIFY_MODEMSTATE, 0xFF),
        (ComPortCommand.FLOWCONTROL_SUSPEND, None),
        (ComPortCommand.FLOWCONTROL_RESUME, None),
        (ComPortCommand.SET_LINESTATE_MASK, 0),
        (ComPortCommand.SET_MODEMSTATE_MASK, 255),
        (ComPortCommand.PURGE_DATA, 3),
        (ComPortCommand.SIGNATURE, b"redirgate \xff test"),
        (ComPortCommand.SIGNATURE, b""),
    ],
)
def test_comport_both_directions(command: ComPortCommand, value: int | bytes | None) -> None:
    server, client = agreed_pair()
    wire = client.send_comport(command, value)
    server.receive_data(wire[:3])
    assert drain(server) == [NEED_DATA]
    server.receive_data(wire[3:])
    assert drain(server) == [ComPort(command, value), NEED_DATA]
    answer = server.send_comport(command, value)
    assert answer[3] == command + 100
    client.receive_data(answer)
    assert drain(client) == [ComPort(command, value), NEED_DATA]


def test_pyserial_baud_request_bytes() -> None:
    # pyserial 3.5 SET-BAUDRATE 9600: IAC SB 44 1 00 00 25 80 IAC SE
    server, _ = agreed_pair()
    server.receive_data(bytes([IAC, SB, 44, 1, 0, 0, 0x25, 0x80, IAC, SE]) + b"tail")
    assert drain(server) == [ComPort(ComPortCommand.SET_BAUDRATE, 9600), Data(b"tail"), NEED_DATA]


@pytest.mark.parametrize(
    ("payload", "error", "command"),
    [
        (bytes([13]), ComPortValueError, None),  # unknown command code
        (bytes([101, 0, 0, 0x25, 0x80]), ComPortValueError, None),  # a server code sent to a server
        (bytes([1, 0, 0, 1]), ComPortValueError, ComPortCommand.SET_BAUDRATE),  # short baud
        (bytes([2, 3]), ComPortValueError, ComPortCommand.SET_DATASIZE),
        (bytes([2, 9]), ComPortValueError, ComPortCommand.SET_DATASIZE),
        (bytes([3, 6]), ComPortValueError, ComPortCommand.SET_PARITY),
        (bytes([5, 20]), ComPortValueError, ComPortCommand.SET_CONTROL),
        (bytes([8, 1]), ComPortValueError, ComPortCommand.FLOWCONTROL_SUSPEND),
        (bytes([12, 0]), ComPortValueError, ComPortCommand.PURGE_DATA),
        (b"", ComPortValueError, None),
    ],
)
def test_bad_comport_is_skipped_and_codec_continues(
    payload: bytes, error: type[Exception], command: ComPortCommand | None
) -> None:
    server, _client = agreed_pair()
    server.receive_data(bytes([IAC, SB, 44]) + payload + bytes([IAC, SE]) + b"ok")
    events = drain(server)
    assert isinstance(events[0], error)
    assert getattr(events[0], "command", None) == command
    assert events[1:] == [Data(b"ok"), NEED_DATA]


def test_comport_before_agreement_is_refused() -> None:
    server = TelnetConnection(Role.SERVER, accept_remote=ALL)
    server.receive_data(bytes([IAC, SB, 44, 1, 0, 0, 0x25, 0x80, IAC, SE, 0x41]))
    events = drain(server)
    assert isinstance(events[0], SubnegotiationError)
    assert events[1:] == [Data(b"A"), NEED_DATA]


def test_subnegotiation_without_end_loses_only_itself() -> None:
    server, _ = agreed_pair()
    # IAC SB 44 1 ... then a new command (IAC WILL 3) instead of IAC SE
    server.receive_data(bytes([IAC, SB, 44, 1, 0, 0, IAC, WILL, 3]) + b"x")
    events = drain(server)
    assert isinstance(events[0], SubnegotiationError)
    assert events[1] == OptionChanged(3, False, True)
    assert events[2:] == [Data(b"x"), NEED_DATA]


def test_overlong_subnegotiation_is_bounded() -> None:
    conn = TelnetConnection(Role.SERVER, max_subnegotiation_bytes=16)
    conn.receive_data(bytes([IAC, SB, 24]) + b"A" * 10_000)
    assert drain(conn) == [NEED_DATA]
    assert len(conn._sb_payload) == 0  # nothing past the limit was kept
    conn.receive_data(bytes([IAC, SE]) + b"after")
    events = drain(conn)
    assert isinstance(events[0], SubnegotiationError) and "longer than 16" in str(events[0])
    assert events[1:] == [Data(b"after"), NEED_DATA]


def test_eof_inside_subnegotiation() -> None:
    conn = TelnetConnection(Role.SERVER)
    conn.receive_data(bytes([IAC, SB, 24, 1, 2]))
    conn.receive_data(b"")
    events = drain(conn)
    assert isinstance(events[0], SubnegotiationError)
    assert events[-1] is CLOSED


def test_other_subnegotiation_and_commands() -> None:
    conn = TelnetConnection(Role.CLIENT)
    conn.receive_data(bytes([IAC, SB, 24, 0, IAC, IAC, IAC, SE, IAC, 243, IAC, 241, IAC, SE]))
    assert drain(conn) == [Subnegotiation(24, b"\x00\xff"), Command(243), Command(241), NEED_DATA]


def test_local_errors() -> None:
    conn = TelnetConnection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        conn.send_comport(ComPortCommand.SET_DATASIZE, 4)
    with pytest.raises(LocalProtocolError):
        conn.send_comport(ComPortCommand.SET_BAUDRATE, -1)
    with pytest.raises(LocalProtocolError):
        conn.send_comport(ComPortCommand.SIGNATURE, b"x" * 500)
    with pytest.raises(LocalProtocolError):
        conn.send_command(SE)
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


@given(st.binary(min_size=1, max_size=400))
@settings(max_examples=300, deadline=None)
def test_garbage_only_raises_remote_errors(noise: bytes) -> None:
    whole, _ = agreed_pair()
    bytewise, _ = agreed_pair()
    whole.receive_data(noise)
    a = drain(whole)
    b: list[object] = []
    for byte in noise:
        bytewise.receive_data(bytes([byte]))
        b += [e for e in drain(bytewise) if e is not NEED_DATA]
    # same data either way (events may split differently)
    assert data_of(a) == data_of(b)
    assert [e for e in a if not isinstance(e, (Data, RemoteProtocolError)) and e is not NEED_DATA] == [
        e for e in b if not isinstance(e, (Data, RemoteProtocolError))
    ]
