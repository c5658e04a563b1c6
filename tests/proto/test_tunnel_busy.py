"""The busy line and the ticket line (`proto.tunnel.busy`), sans-IO."""

from __future__ import annotations

import pytest

from redirgate.proto import tunnel as t

TICKET = b"00000000002a0123456789abcdef"


def test_a_busy_line_with_a_ticket_still_reads_as_a_busy_line_to_a_client_that_knows_no_ticket() -> None:
    line = t.busy_line(1.234, TICKET)
    assert t.parse_busy(line) == 1.234  # the first line alone, as before tickets
    assert t.parse_busy_ticket(line) == TICKET
    assert t.parse_busy_ticket(t.busy_line(1.234)) is None
    assert t.parse_busy_ticket(line[:-1]) is None  # the ticket's line not complete yet
    assert not t.looks_like_tls(line)


def test_a_ticket_line_is_told_apart_from_a_client_hello_and_taken_whole() -> None:
    line = t.ticket_line(TICKET)
    hello = b"\x16\x03\x01\x00\xf2\x01"
    assert t.parse_ticket_line(line + hello) == (TICKET, len(line))
    assert t.parse_ticket_line(hello) == (None, 0)  # TLS: handed to OpenSSL as it is
    assert t.parse_ticket_line(line[:5]) == (None, -1)  # the start of one: read more
    assert t.parse_ticket_line(line[:-1]) == (None, -1)
    assert t.parse_ticket_line(b"REDIRGATE-TICKET xyz\n") == (None, 0)  # not a ticket
    assert t.parse_ticket_line(b"REDIRGATE-TICKET " + b"0" * 40 + b"\n") == (None, 0)  # too long
    with pytest.raises(ValueError):
        t.ticket_line(b"not hex")
