"""Tunnel messages: every kind round-trips; constructors and decoders refuse bad fields.

The encoder and decoder are the real ones (`encode_message` /
`decode_message`); malformed wire maps are built with msgpack itself, the
way a broken or hostile peer would.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from redirgate.proto.tunnel import (
    ATTACH_MESSAGES,
    CONTROL_MESSAGES,
    Attach,
    ChannelFailed,
    ClientHello,
    CloseChannel,
    DeviceEntry,
    DeviceSelector,
    Error,
    ErrorCode,
    GatewayHello,
    Heartbeat,
    InvalidMessageError,
    Inventory,
    InventoryUpdate,
    LocalProtocolError,
    OpenChannel,
    SelectorError,
    SelectorScheme,
    StreamDrops,
    decode_message,
    encode_message,
    parse_selector,
)
from tests.support import tunnel_cases as cases

LIMIT = 1024 * 1024
TOKEN = bytes(range(16))
STICK = DeviceEntry("usb:1209:0001:ABC", "usb", 0x1209, 0x0001, "ABC", "1-2", "stick")


def wire(message: object) -> bytes:
    body = encode_message(message, LIMIT)  # type: ignore[arg-type]  # any message, invalid ones too
    assert int.from_bytes(body[:4], "big") == len(body) - 4
    return body[4:]


@given(cases.control_messages)
def test_every_control_message_round_trips(message):
    again = decode_message(wire(message), CONTROL_MESSAGES)
    assert again == message
    assert type(again) is type(message)


@given(st.one_of(cases.attaches, cases.attach_results))
def test_attach_messages_round_trip(message):
    assert decode_message(wire(message), ATTACH_MESSAGES) == message


def test_every_kind_is_covered_by_the_strategies():
    assert set(CONTROL_MESSAGES) == {
        "client_hello",
        "gateway_hello",
        "inventory",
        "inventory_update",
        "heartbeat",
        "heartbeat_ack",
        "open_channel",
        "channel_opened",
        "channel_failed",
        "close_channel",
        "error",
        "channel_ack",
        "revocations",
        "stream_drops",
    }


def test_wire_form_is_a_plain_map():
    message = OpenChannel(7, "usb:1209:0001", TOKEN, "raw", {"baud": 115200, "parity": "N"})
    assert msgpack.unpackb(wire(message)) == {
        "kind": "open_channel",
        "channel_id": 7,
        "device_selector": "usb:1209:0001",
        "token": TOKEN,
        "protocol": "raw",
        "options": {"baud": 115200, "parity": "N"},
    }
    hello = msgpack.unpackb(wire(ClientHello(software="rg", capabilities={"b", "a"})))
    assert hello == {"kind": "client_hello", "protocol_version": [1, 0], "software": "rg", "capabilities": ["a", "b"]}


def test_the_token_is_not_in_repr():
    assert TOKEN.hex() not in repr(OpenChannel(1, "usb-port:1-2", TOKEN))
    assert repr(TOKEN) not in repr(Attach(1, TOKEN))


# ----------------------------------------------------------- constructors

BAD_CONSTRUCTIONS = [
    (lambda: ClientHello(protocol_version=(1,)), "protocol_version"),
    (lambda: ClientHello(protocol_version=(1, -1)), "protocol_version"),
    (lambda: ClientHello(protocol_version="1.0"), "protocol_version"),
    (lambda: ClientHello(software="a\nb"), "software"),
    (lambda: ClientHello(software="x" * 65), "software"),
    (lambda: ClientHello(capabilities=["Upper"]), "capabilities"),
    (lambda: ClientHello(capabilities=["a", "a"]), "twice"),
    (lambda: ClientHello(capabilities="ab"), "capabilities"),
    (lambda: GatewayHello(heartbeat_interval_s=0), "heartbeat_interval_s"),
    (lambda: GatewayHello(heartbeat_interval_s=float("nan")), "heartbeat_interval_s"),
    (lambda: GatewayHello(heartbeat_interval_s=10, heartbeat_timeout_s=10), "must exceed"),
    (lambda: GatewayHello(heartbeat_timeout_s=True), "heartbeat_timeout_s"),
    (lambda: Heartbeat(-1), "seq"),
    (lambda: Heartbeat(2**63), "seq"),
    (lambda: Heartbeat(True), "seq"),
    (lambda: OpenChannel(0, "usb:1209:0001", TOKEN), "channel_id"),
    (lambda: OpenChannel(2**32, "usb:1209:0001", TOKEN), "channel_id"),
    (lambda: OpenChannel(1, "usb:1209", TOKEN), "device_selector"),
    (lambda: OpenChannel(1, "usb:1209:0001", b"short"), "token"),
    (lambda: OpenChannel(1, "usb:1209:0001", b"x" * 33), "token"),
    (lambda: OpenChannel(1, "usb:1209:0001", "x" * 16), "token"),
    (lambda: OpenChannel(1, "usb:1209:0001", TOKEN, "telnet"), "protocol"),
    (lambda: OpenChannel(1, "usb:1209:0001", TOKEN, options={"k": [1]}), "options"),
    (lambda: OpenChannel(1, "usb:1209:0001", TOKEN, options={"K": 1}), "options"),
    (lambda: OpenChannel(1, "usb:1209:0001", TOKEN, options={"k": float("inf")}), "options"),
    (lambda: OpenChannel(1, "usb:1209:0001", TOKEN, options={"k": 2**64}), "options"),
    (lambda: OpenChannel(1, "usb:1209:0001", TOKEN, options={f"k{i}": i for i in range(33)}), "options"),
    (lambda: ChannelFailed(1, "x" * 257), "reason"),
    (lambda: CloseChannel(1, "bell\a"), "reason"),
    (lambda: Error("Bad Code"), "code"),
    (lambda: Error("x" * 33), "code"),
    (lambda: DeviceEntry("usb:1209:0001", "usb"), "vendor_id"),
    (lambda: DeviceEntry("usb:1209:0001", "serial"), "does not name"),
    (lambda: DeviceEntry("usb:1209:0001", "firewire", 1, 1), "kind"),
    (lambda: DeviceEntry("usb:ABCD:0001", "usb", 1, 1), "not canonical"),
    (lambda: DeviceEntry("usb:1209:0001", "usb", 0x10000, 1), "vendor_id"),
    (lambda: DeviceEntry("usb:1209:0001", "usb", 1, 1, serial=""), "serial"),
    (lambda: DeviceEntry("usb:1209:0001", "usb", 1, 1, description="\x1b[31m"), "description"),
    (lambda: DeviceEntry("usb:1209:0001", "usb", 1, 1, busy=1), "busy"),
    (lambda: Inventory([STICK, STICK]), "twice"),
    (lambda: Inventory([{"id": "usb:1209:0001"}]), "DeviceEntry"),
    (lambda: Inventory(STICK), "list"),
    (lambda: InventoryUpdate([STICK], [STICK.id]), "both added and removed"),
    (lambda: InventoryUpdate(removed=["nonsense"]), "removed"),
    (lambda: InventoryUpdate(removed=[STICK.id, STICK.id]), "twice"),
    (lambda: StreamDrops(0), "channel_id"),
    (lambda: StreamDrops(1, iso_out=-1), "iso_out"),
    (lambda: StreamDrops(1, to_guest=2**64), "to_guest"),
    (lambda: StreamDrops(1, iso_out=True), "iso_out"),
]


@pytest.mark.parametrize("build, mentions", BAD_CONSTRUCTIONS)
def test_constructors_refuse_bad_fields(build, mentions):
    with pytest.raises(LocalProtocolError, match=mentions.replace("(", r"\(")):
        build()


def test_constructors_normalise():
    assert ClientHello(protocol_version=[1, 2], capabilities=["x"]).capabilities == frozenset({"x"})
    assert GatewayHello(heartbeat_interval_s=5, heartbeat_timeout_s=20).heartbeat_interval_s == 5.0
    assert Error(ErrorCode.VERSION).code.__class__ is str
    assert OpenChannel(1, "usb:1209:0001", bytearray(TOKEN)).token == TOKEN
    assert Inventory([STICK]).devices == (STICK,)
    options = OpenChannel(1, "usb:1209:0001", TOKEN, options={"a": 1}).options
    with pytest.raises(TypeError):
        options["a"] = 2  # type: ignore[index]  # read-only on purpose: must raise


# ----------------------------------------------------------- decoding


def body(**fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


BAD_MAPS = [
    (body(kind="client_hello", identity="CN=someone-else"), "unknown field 'identity'"),
    (body(kind="client_hello", protocol_version=["1", 0]), "protocol_version"),
    (body(kind="heartbeat"), "missing field 'seq'"),
    (body(kind="heartbeat", seq=1.0), "seq"),
    (body(kind="heartbeat", seq=-5), "seq"),
    (body(kind="open_channel", channel_id=1, device_selector="usb:1209:0001", token="0123456789abcdef"), "token"),
    (body(kind="inventory", devices={"a": 1}), "devices"),
    (
        body(
            kind="inventory", devices=[{"id": "usb:1209:0001", "kind": "usb", "vendor_id": 1, "product_id": 1, "x": 1}]
        ),
        "unknown field 'x'",
    ),
    (body(kind="inventory", devices=[5]), "expected a map"),
    (body(kind="inventory_update", added=[], removed=[1]), "removed"),
    (body(kind="attach", channel_id=1, token=TOKEN), "unknown message kind"),
    (body(kind="nope"), "unknown message kind"),
    (body(kind=5), "'kind' string"),
    (body(seq=1), "'kind' string"),
    (body(kind="heartbeat", seq=msgpack.Timestamp(1, 0)), "seq"),
    (body(kind="error", code="protocol", message=msgpack.Timestamp(1, 0)), "message"),
]


@pytest.mark.parametrize("data, mentions", BAD_MAPS)
def test_decoder_refuses_bad_maps(data, mentions):
    with pytest.raises(InvalidMessageError, match=mentions):
        decode_message(data, CONTROL_MESSAGES)


def test_huge_device_lists_are_cut_before_they_are_built():
    entry = {"id": "usb:1209:0001", "kind": "usb", "vendor_id": 1, "product_id": 1}
    data = body(kind="inventory", devices=[entry] * 5000)
    with pytest.raises(InvalidMessageError, match="more than 1024"):
        decode_message(data, CONTROL_MESSAGES)


# ----------------------------------------------------------- selectors

GOOD_SELECTORS = [
    ("usb:1209:0001", DeviceSelector(SelectorScheme.USB, 0x1209, 0x0001)),
    ("usb:ABCD:ef01", DeviceSelector(SelectorScheme.USB, 0xABCD, 0xEF01)),
    ("usb:1209:0001:SER:IAL-1", DeviceSelector(SelectorScheme.USB, 0x1209, 0x0001, "SER:IAL-1")),
    ("usb-port:1-2", DeviceSelector(SelectorScheme.USB_PORT, path="1-2")),
    ("usb-port:3-1.4.2", DeviceSelector(SelectorScheme.USB_PORT, path="3-1.4.2")),
    ("serial:ttyUSB0", DeviceSelector(SelectorScheme.SERIAL, path="ttyUSB0")),
    ("parallel:lp0", DeviceSelector(SelectorScheme.PARALLEL, path="lp0")),
]
BAD_SELECTORS = [
    "",
    "usb",
    "usb:",
    "usb:1209",
    "usb:12090:0001",
    "usb:12g9:0001",
    "usb:1209:0001:",
    "usb:1209:0001:a b",
    "usb-port:1",
    "usb-port:0-1",
    "usb-port:1-0",
    "usb-port:1-2.",
    "usb-port:256-1",
    "usb-port:1-1.2.3.4.5.6.7.8",
    "serial:",
    "serial:a b",
    "parallel:\n",
    "scsi:0:0",
    "USB:1209:0001",
    5,
    None,
    "usb:1209:0001:" + "s" * 127,
]


@pytest.mark.parametrize("text, expected", GOOD_SELECTORS)
def test_selectors_parse(text, expected):
    selector = parse_selector(text)
    assert selector == expected
    assert parse_selector(selector.text) == selector
    assert selector.text == text.lower() if text.startswith("usb:ABCD") else selector.text == text


@pytest.mark.parametrize("text", BAD_SELECTORS)
def test_bad_selectors_are_refused(text):
    with pytest.raises(SelectorError):
        parse_selector(text)


@pytest.mark.parametrize(
    "selector, matches",
    [
        ("usb:1209:0001", True),
        ("usb:1209:0001:ABC", True),
        ("usb:1209:0001:XYZ", False),
        ("usb:1209:0002", False),
        ("usb-port:1-2", True),
        ("usb-port:1-2.1", False),
        ("serial:ABC", False),
    ],
)
def test_selector_matching(selector, matches):
    assert parse_selector(selector).matches(STICK) is matches


def test_serial_and_parallel_selectors_match_by_id():
    port = DeviceEntry("serial:ttyS0", "serial", port_path="/dev/ttyS0")
    assert parse_selector("serial:ttyS0").matches(port)
    assert not parse_selector("parallel:ttyS0").matches(port)


@given(cases.device_entries())
def test_every_device_id_selects_its_device(entry):
    assert entry.selector.matches(entry)
    assert entry.selector.text == entry.id
