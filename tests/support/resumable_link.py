"""Both ends of one resumable channel over real TLS on loopback, with breaks on demand.

Two `ResumableStream`s over a list of prepared TLS pairs: `sever` breaks
the current TCP connection under both TLS ends (no close_notify: a break,
not an end); each end's `reconnect` takes the next pair and the replay the
other end's count asks for.  Acks go straight to the other end with a
small replay buffer, so senders also wait for room.  Small kernel send
buffers make OpenSSL put part of a write on the wire and say "would block"
for the rest.
"""

from __future__ import annotations

import os
import socket

import trio

from redirgate.proto import tunnel as t
from redirgate.transport import ResumableStream, ZeroCopyTLSStream
from tests.support.transport_lab import Pki, tls_pair

#: small enough that each direction fills it many times (acks free it)
REPLAY_LIMIT = 64 * 1024
ACK_EVERY = 16 * 1024


def _socket_of(stream: ZeroCopyTLSStream) -> socket.socket:
    """A second handle on the TCP socket under `stream` (close it after use)."""
    return socket.socket(fileno=os.dup(stream.lend().fd))


def sever(stream: ZeroCopyTLSStream) -> None:
    """Shut the TCP connection under `stream` down both ways (as a dead link
    would look to both TLS ends: no close_notify, reads end, writes fail)."""
    with _socket_of(stream) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def small_send_buffer(stream: ZeroCopyTLSStream) -> None:
    """A small kernel send buffer: OpenSSL then puts part of a big write on
    the wire and says "would block" for the rest (what the replay must record exactly)."""
    with _socket_of(stream) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


class Link:
    """Both ends of one resumable channel and the TLS connections it goes through."""

    def __init__(
        self, pairs: list[tuple[ZeroCopyTLSStream, ZeroCopyTLSStream]], replay_limit: int = REPLAY_LIMIT
    ) -> None:
        self.pairs = pairs
        self.replay_limit = replay_limit
        self.round = 0
        self.counts: list[dict[str, int]] = [{} for _ in pairs]
        self.told: list[trio.Event] = [trio.Event() for _ in pairs]
        self.reconnects = {"a": 0, "b": 0}
        self.a = self._end("a", 0)
        self.b = self._end("b", 1)
        self.a._on_ack = self.b.acked  # type: ignore[assignment]  # acks straight to the other end
        self.b._on_ack = self.a.acked  # type: ignore[assignment]

    def _end(self, side: str, index: int) -> ResumableStream:
        channel = t.ResumableChannel(1, replay_limit=self.replay_limit, ack_every=ACK_EVERY)

        async def reconnect(why: str) -> tuple[trio.abc.Stream, bytes]:
            self.reconnects[side] += 1
            stream = self.a if side == "a" else self.b
            n = stream.generation_round
            stream.generation_round += 1
            self.counts[n][side] = channel.incoming.received
            if len(self.counts[n]) == 2:
                self.told[n].set()
            await self.told[n].wait()
            other = self.counts[n]["b" if side == "a" else "a"]
            return self.pairs[n][index], channel.resume(other)

        first = self.pairs[0][index]
        resumable = ResumableStream(first, channel, reconnect, peer=f"end {side}")
        resumable.generation_round = 1  # type: ignore[attr-defined]  # which pair its next reconnect takes
        return resumable

    def current(self) -> tuple[ZeroCopyTLSStream, ZeroCopyTLSStream]:
        return self.a.inner, self.b.inner  # type: ignore[return-value]


async def open_link(env: Pki, connections: int, replay_limit: int = REPLAY_LIMIT) -> Link:
    pairs = [await tls_pair(env.server_context(), env.client_context()) for _ in range(connections)]
    for pair in pairs:
        small_send_buffer(pair[0])
    return Link(pairs, replay_limit)
