"""The gateway's early refusal, sans-IO: "busy, retry after N ms", in place of a TLS handshake.

A gateway that sheds load (more handshakes arriving than it can finish)
does not start a handshake it would time out: it writes one short
plaintext line where its TLS ServerHello would be and closes the
connection::

    REDIRGATE-BUSY retry-after-ms=1234\\n
    REDIRGATE-TICKET 0123456789abcdef0123456789abcdef\\n

A TLS record starts with a content type of 20 to 23 (RFC 8446 5.1), never
with ``R``, so a client tells the two apart from the first byte the gateway
sends; `parse_busy` reads the line from those bytes.  The line is not
authenticated (nothing is yet): a client honours it only within its own
bounds (at most its `reconnect_max_s`), so a forged one can delay it no
more than a dropped connection would.

The second line is optional (a client that reads only the first ignores
it): the client's place in the gateway's queue, opaque to the client.  A
client that got one sends it back as the first bytes of its next dial to
that gateway, before its TLS ClientHello (`ticket_line`; the gateway reads
it with `parse_ticket_line` and hands the rest to OpenSSL), so the gateway
admits it at its place instead of queueing it again at the end.
"""

from __future__ import annotations

__all__ = [
    "BUSY_MAX_BYTES",
    "BUSY_PREFIX",
    "TICKET_LINE_MAX_BYTES",
    "TICKET_PREFIX",
    "busy_line",
    "looks_like_tls",
    "parse_busy",
    "parse_busy_ticket",
    "parse_ticket_line",
    "ticket_line",
]

BUSY_PREFIX = b"REDIRGATE-BUSY retry-after-ms="
#: the longest first line `busy_line` writes (a client that knows no ticket reads this much at most)
BUSY_MAX_BYTES = len(BUSY_PREFIX) + 9
#: the ticket's line, in the busy answer and as a client's first bytes
TICKET_PREFIX = b"REDIRGATE-TICKET "
#: a ticket is 1-32 of these (hex digits), opaque to the client
_TICKET_CHARS = frozenset(b"0123456789abcdef")
_TICKET_MAX = 32
#: the longest ticket line
TICKET_LINE_MAX_BYTES = len(TICKET_PREFIX) + _TICKET_MAX + 1
#: the largest hint a line carries, ms (a day: far above any client's backoff)
_MAX_MS = 86_400_000


def busy_line(retry_after_s: float, ticket: bytes | None = None) -> bytes:
    """The bytes a gateway writes to refuse a connection for `retry_after_s` (with the
    client's place in its queue, `ticket`, if given)."""
    ms = min(_MAX_MS, max(0, round(retry_after_s * 1000)))
    return BUSY_PREFIX + str(ms).encode() + b"\n" + (ticket_line(ticket) if ticket is not None else b"")


def ticket_line(ticket: bytes) -> bytes:
    """The ticket's line (`ticket`: 1-32 lowercase hex digits); ValueError if it is not one."""
    if not _valid_ticket(ticket):
        raise ValueError(f"not a ticket: {ticket[:40]!r}")
    return TICKET_PREFIX + ticket + b"\n"


def _valid_ticket(ticket: bytes) -> bool:
    return 0 < len(ticket) <= _TICKET_MAX and _TICKET_CHARS.issuperset(ticket)


def looks_like_tls(first: bytes) -> bool:
    """Whether a server's first bytes can be a TLS record (content type 20-23)."""
    return not first or 20 <= first[0] <= 23


def parse_busy(data: bytes) -> float | None:
    """The hint, in seconds, of a complete busy line at the start of `data`; None if `data` is not one."""
    if not data.startswith(BUSY_PREFIX):
        return None
    digits, newline, _ = data[len(BUSY_PREFIX) : BUSY_MAX_BYTES].partition(b"\n")
    if not newline or not digits.isdigit() or int(digits) > _MAX_MS:
        return None
    return int(digits) / 1000


def parse_busy_ticket(data: bytes) -> bytes | None:
    """The ticket on the line after a complete busy line at the start of `data`; None if there is none
    (or not all of it is in `data`)."""
    if parse_busy(data) is None:
        return None
    rest = data[data.index(b"\n") + 1 :]
    ticket, used = parse_ticket_line(rest)
    return ticket if used else None


def parse_ticket_line(data: bytes) -> tuple[bytes | None, int]:
    """A client's first bytes: (its ticket, how many bytes the ticket line takes) if `data` starts with a
    complete, valid ticket line; (None, 0) if `data` does not start with one (a ClientHello, or garbage,
    or a line that is not a ticket: the caller hands the bytes on as they are); (None, -1) if `data` is
    the start of a ticket line that is not complete yet (read more, up to TICKET_LINE_MAX_BYTES)."""
    if not data.startswith(TICKET_PREFIX):
        return (None, -1) if TICKET_PREFIX.startswith(data) and data else (None, 0)
    ticket, newline, _ = data[len(TICKET_PREFIX) : TICKET_LINE_MAX_BYTES].partition(b"\n")
    if not newline:
        return (None, -1) if len(data) < TICKET_LINE_MAX_BYTES and _TICKET_CHARS.issuperset(ticket) else (None, 0)
    if not _valid_ticket(ticket):
        return None, 0
    return ticket, len(TICKET_PREFIX) + len(ticket) + 1
