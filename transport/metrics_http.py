"""A tiny HTTP endpoint for Prometheus: `GET /metrics` and `GET /healthz`, on trio.

Runs on the service's own trio loop (no thread of prometheus_client's), so
the collectors read live state without locks.  One request per connection
(HTTP/1.0 style, `Connection: close`), the request head limited to 8 KiB
and 5 s; anything but GET of the two paths is 404 or 405.  `/healthz` is
200 "ok" while `healthy()` says so, else 503 with its reason.  Bind it to
loopback or a management network: it tells anyone who asks what is
connected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:  # imported when a scrape comes: a service without metrics never loads it
    from prometheus_client import CollectorRegistry

__all__ = ["serve_metrics"]

_HEAD_LIMIT = 8192
_TIMEOUT_S = 5.0


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def answer(request_line: bytes, registry: CollectorRegistry, healthy: Callable[[], tuple[bool, str]]) -> bytes:
    """The whole HTTP response to one request line (pure: tests call it directly)."""
    parts = request_line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _response("400 Bad Request", b"bad request\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target not in (b"/metrics", b"/healthz"):
        return _response("404 Not Found", b"try /metrics or /healthz\n")
    if method != b"GET":
        return _response("405 Method Not Allowed", b"GET only\n")
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    if target == b"/healthz":
        ok, reason = healthy()
        return _response(
            "200 OK" if ok else "503 Service Unavailable", (reason or ("ok" if ok else "down")).encode() + b"\n"
        )
    return _response("200 OK", generate_latest(registry), CONTENT_TYPE_LATEST)


async def serve_metrics(
    listeners: list[trio.SocketListener],
    registry: CollectorRegistry,
    healthy: Callable[[], tuple[bool, str]],
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `/metrics` and `/healthz` on `listeners` until cancelled."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(_TIMEOUT_S):
                head = b""
                while b"\r\n" not in head and len(head) < _HEAD_LIMIT:
                    chunk = await stream.receive_some(_HEAD_LIMIT)
                    if not chunk:
                        return
                    head += chunk
                await stream.send_all(answer(head.split(b"\r\n", 1)[0], registry, healthy))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    task_status.started()
    await trio.serve_listeners(handle, listeners)
