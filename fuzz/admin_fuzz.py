"""atheris target: the admin socket's requests (redirgate.gateway.admin.parse_request).

The admin socket reads one request line (`_reply`: until a newline, EOF or
REQUEST_LIMIT bytes) and parses it with `parse_request`, which is sans-IO.
The input is the bytes a local client sends:

  byte 0   k = low 4 bits: k chunk sizes follow (each byte + 1), the way
           the request arrives in reads; k = 0: one read
  rest     the request bytes, then EOF

The reads are gathered the way `_reply` does (`request_complete`), then
parsed.  Only `BadAdminRequest` may escape; a parsed request is `status`
or `disconnect` with a non-empty string target of at most 255 characters;
the answer never depends on how the bytes were cut (nor on bytes past the
first line); and a request serialised back as JSON parses to itself.

Run: python fuzz/admin_fuzz.py [libFuzzer options] [corpus dirs]
"""

from __future__ import annotations

import json
import sys

import atheris

with atheris.instrument_imports():
    from redirgate.gateway.admin import (
        REQUEST_LIMIT,
        AdminRequest,
        BadAdminRequest,
        parse_request,
        request_complete,
    )


def gather(stream: bytes, sizes: list[int]) -> bytes:
    """What `_reply` has read when it stops reading."""
    data = b""
    pos, i = 0, 0
    while not request_complete(data) and pos < len(stream):
        step = sizes[i % len(sizes)] if sizes else REQUEST_LIMIT
        data += stream[pos : pos + step]
        pos += step
        i += 1
    return data


def answer(data: bytes) -> AdminRequest | str:
    try:
        return parse_request(data)
    except BadAdminRequest as exc:
        assert exc.reason, "a refusal without a reason"
        return exc.reason


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    k = data[0] & 15
    sizes = [b + 1 for b in data[1 : 1 + k]]
    stream = data[1 + k :]
    got = answer(gather(stream, sizes))
    line = stream[:REQUEST_LIMIT].split(b"\n", 1)[0]
    assert answer(gather(stream, [1])) == got, "the answer depends on how the reads were cut"
    assert answer(line) == got, "the answer depends on bytes past the first line"
    if isinstance(got, AdminRequest):
        assert got.command in ("status", "disconnect"), got
        if got.command == "disconnect":
            assert isinstance(got.target, str) and 0 < len(got.target) <= 255, got
        again = json.dumps({"command": got.command, **({"target": got.target} if got.target else {})})
        assert parse_request(again.encode()) == got, (again, got)


# ---------------------------------------------------------------- seeds
def seed_inputs() -> dict[str, bytes]:
    return {
        "empty": bytes([0]),
        "status": bytes([0]) + b'{"command": "status"}\n',
        "disconnect": bytes([0]) + b'{"command": "disconnect", "target": "kbd"}\n',
        "disconnect-chunked": bytes([2, 4, 9]) + b'{"command": "disconnect", "target": "thin-01"}\n',
        "no-target": bytes([0]) + b'{"command": "disconnect"}\n',
        "unknown": bytes([0]) + b'{"command": "reboot"}\n',
        "not-json": bytes([0]) + b"status please\n",
        "a-list": bytes([0]) + b"[1, 2, 3]\n",
        "deep": bytes([0]) + b"[" * 3000 + b"]" * 3000 + b"\n",
        "two-lines": bytes([0]) + b'{"command": "status"}\n{"command": "disconnect", "target": "x"}\n',
        "no-newline": bytes([0]) + b'{"command": "disconnect", "target": "' + b"a" * 5000 + b'"}',
    }


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
