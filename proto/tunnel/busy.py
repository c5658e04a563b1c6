"""The gateway's early refusal, sans-IO: "busy, retry after N ms", in place of a TLS handshake.

A gateway that sheds load (more handshakes arriving than it can finish)
does not start a handshake it would time out: it writes one short
plaintext line where its TLS ServerHello would be and closes the
connection::

    REDIRGATE-BUSY retry-after-ms=1234\\n

A TLS record starts with a content type of 20 to 23 (RFC 8446 5.1), never
with ``R``, so a client tells the two apart from the first byte the gateway
sends; `parse_busy` reads the line from those bytes.  The line is not
authenticated (nothing is yet): a client honours it only within its own
bounds (at most its `reconnect_max_s`), so a forged one can delay it no
more than a dropped connection would.
"""

from __future__ import annotations

__all__ = ["BUSY_MAX_BYTES", "BUSY_PREFIX", "busy_line", "looks_like_tls", "parse_busy"]

BUSY_PREFIX = b"REDIRGATE-BUSY retry-after-ms="
#: the longest line `busy_line` writes (a client reads this much at most)
BUSY_MAX_BYTES = len(BUSY_PREFIX) + 9
#: the largest hint a line carries, ms (a day: far above any client's backoff)
_MAX_MS = 86_400_000


def busy_line(retry_after_s: float) -> bytes:
    """The bytes a gateway writes to refuse a connection for `retry_after_s`."""
    ms = min(_MAX_MS, max(0, round(retry_after_s * 1000)))
    return BUSY_PREFIX + str(ms).encode() + b"\n"


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
