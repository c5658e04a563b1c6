"""Small socket helpers the streams share: peer naming, TCP_NODELAY, a busy guard.

Owns :func:`peer_label` (how every log line and error names a peer),
:func:`set_nodelay` and :class:`Busy` (one task per direction of a stream).
"""

from __future__ import annotations

import os
import socket

import trio

__all__ = ["DEFAULT_RECEIVE_BYTES", "Busy", "cut_fd", "peer_label", "set_nodelay"]

#: what `receive_some()` without a size asks for
DEFAULT_RECEIVE_BYTES = 65536


class Busy:
    """One task at a time per direction, else trio.BusyResourceError."""

    __slots__ = ("_message", "held")

    def __init__(self, message: str) -> None:
        self.held = False
        self._message = message

    def __enter__(self) -> None:
        if self.held:
            raise trio.BusyResourceError(self._message)
        self.held = True

    def __exit__(self, *exc: object) -> None:
        self.held = False


def peer_label(sock: socket.socket | trio.socket.SocketType) -> str:
    """ "host:port" of the peer (IPv6 in brackets), or the family name."""
    try:
        address = sock.getpeername()
    except OSError:
        return "unconnected"
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return "unix" if sock.family == socket.AF_UNIX else str(address)


def cut_fd(fd: int) -> None:
    """shutdown(SHUT_RDWR) on the connected socket `fd` (it stays open, the
    connection is over both ways; ENOTCONN, already over, is fine)."""
    dup = socket.socket(fileno=os.dup(fd))
    try:
        dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()


def set_nodelay(sock: socket.socket | trio.socket.SocketType) -> None:
    """Disable Nagle on TCP sockets (a relay forwards what it has at once)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def check_receive_size(max_bytes: int | None) -> int:
    """`receive_some`'s argument checked as trio's streams check it."""
    if max_bytes is None:
        return DEFAULT_RECEIVE_BYTES
    if not isinstance(max_bytes, int):
        raise TypeError("max_bytes must be an int")
    if max_bytes < 1:
        raise ValueError("max_bytes must be >= 1")
    return max_bytes
