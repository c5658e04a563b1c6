"""RESP, byte by byte: commands out, every reply type in, split anywhere, bounded."""

from __future__ import annotations

import pytest

from redirgate.proto.resp import NEED_DATA, Push, ReplyError, RespParser, RespProtocolError, encode_command


def parse_all(data: bytes) -> list[object]:
    parser = RespParser()
    parser.receive_data(data)
    out = []
    while (reply := parser.next_reply()) is not NEED_DATA:
        out.append(reply)
    assert parser.buffered == 0
    return out


def test_command_is_an_array_of_bulk_strings() -> None:
    assert encode_command("SET", b"k\r\n", 5, 1.5) == b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$1\r\n5\r\n$3\r\n1.5\r\n"
    with pytest.raises(TypeError):
        encode_command("SET", True)  # type: ignore[arg-type]  # refused at run time on purpose
    with pytest.raises(ValueError):
        encode_command()


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (b"+OK\r\n", "OK"),
        (b"-ERR wrong\r\n", ReplyError("ERR wrong")),
        (b":-42\r\n", -42),
        (b"$5\r\nhe\r\no\r\n", b"he\r\no"),
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*2\r\n$1\r\na\r\n:1\r\n", [b"a", 1]),
        (b"*1\r\n*1\r\n+x\r\n", [["x"]]),
        (b"_\r\n", None),
        (b"#t\r\n", True),
        (b",1.5\r\n", 1.5),
        (b"(123456789012345678901234567890\r\n", 123456789012345678901234567890),
        (b"%1\r\n+a\r\n:1\r\n", {"a": 1}),
        (b"~2\r\n:1\r\n:2\r\n", {1, 2}),
        (b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np\r\n", Push([b"message", b"c", b"p"])),
        (b"!9\r\nERR nope!\r\n", ReplyError("ERR nope!")),
        (b"=8\r\ntxt:abcd\r\n", b"txt:abcd"),
    ],
)
def test_each_reply_type(wire: bytes, value: object) -> None:
    assert parse_all(wire) == [value]


def test_a_reply_split_at_every_byte_comes_out_once_whole() -> None:
    wire = b"*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$5\r\nhello\r\n+OK\r\n"
    parser = RespParser()
    out = []
    for i in range(len(wire)):
        parser.receive_data(wire[i : i + 1])
        while (reply := parser.next_reply()) is not NEED_DATA:
            out.append(reply)
    assert out == [[b"message", b"chan", b"hello"], "OK"]


def test_error_code_is_its_first_word() -> None:
    assert ReplyError("WRONGPASS invalid username-password pair").code == "WRONGPASS"


@pytest.mark.parametrize(
    "wire",
    [
        b"?what\r\n",
        b":12x\r\n",
        b"$3\r\nabcXY",
        b"#x\r\n",
        b"$999999999999\r\n",
        b"*99999999999\r\n",
        b"*1\r\n" * 40 + b":1\r\n",
        b"+" + b"x" * 70000,
    ],
)
def test_garbage_and_bounds_are_protocol_errors(wire: bytes) -> None:
    parser = RespParser()
    parser.receive_data(wire)
    with pytest.raises(RespProtocolError):
        parser.next_reply()
