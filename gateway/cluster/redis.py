"""A small Redis client for trio: commands, pipelines, pub/sub.

Why our own and not a library: redis-py's async client is asyncio only, and
the trio ports of it are unmaintained; what the cluster needs is a handful of
commands (SET/GET/DEL with expiry, SCAN, PUBLISH, SUBSCRIBE).  The wire
format is `redirgate.proto.resp` (sans-IO, tested byte by byte); this module
is the I/O around it: one TCP (or TLS, `rediss://`) connection, AUTH and
SELECT on connect, one request at a time in order (a trio.Lock), pipelines
that send many commands in one write.

`RedisUrl.parse("redis://:PASSWORD@HOST:PORT/DB")` reads the address;
`rediss://` is TLS (the server's certificate is checked against `ca`, the
system's authorities when None, and must name the URL's host); the client
authenticates with the password (AUTH), not with a certificate: the
gateway's own certificate is a server certificate, which a Redis with
`tls-auth-clients yes` would refuse.

Every failure is one `RedisError` naming the server and the reason: refused,
lost, timed out, an error reply, a protocol error.  A connection that failed
is closed and stays closed; the caller (`cluster.node`) opens a new one.

Threads: everything runs on the gateway's trio loop.
"""

from __future__ import annotations

import math
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from redirgate.gateway.errors import GatewayError
from redirgate.proto.resp import NEED_DATA, Push, Reply, ReplyError, RespParser, RespProtocolError, encode_command
from redirgate.transport import ClientContext, PeerGone, TlsRefused, open_tls_connection

__all__ = [
    "RedisConnection",
    "RedisError",
    "RedisUrl",
    "Subscription",
    "open_redis",
    "open_subscription",
    "seconds",
    "tls_context",
]

_RECEIVE_BYTES = 65536
DEFAULT_PORT = 6379


class RedisError(GatewayError):
    """Redis refused, lost, or answered an error; `peer` is the server (host:port)."""


@dataclass(frozen=True)
class RedisUrl:
    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, text: str) -> RedisUrl:
        """`redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB]`; ValueError with the reason."""
        if not isinstance(text, str):
            raise ValueError('must be a string like "redis://HOST:PORT/DB"')
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"{_shown(text)}: the scheme must be redis:// or rediss:// (TLS)")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError(f"{_shown(text)} has no valid port (1-65535)") from None
        if not parts.hostname:
            raise ValueError(f"{_shown(text)} names no host (redis://HOST:PORT/DB)")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"{_shown(text)}: the database after the / must be a number, e.g. /0")
        if parts.query or parts.fragment:
            raise ValueError(f"{_shown(text)}: no ?query or #fragment is understood")
        user = urllib.parse.unquote(parts.username) if parts.username else None
        password = urllib.parse.unquote(parts.password) if parts.password is not None else None
        return cls(parts.hostname, port, int(path or 0), user, password, parts.scheme == "rediss")

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        """The URL without its password (for logs and status)."""
        scheme = "rediss" if self.tls else "redis"
        auth = f"{self.username or ''}:***@" if self.password is not None else ""
        return f"{scheme}://{auth}{self.address}/{self.db}"


def _shown(text: str) -> str:
    """A URL for an error message, its password hidden."""
    parts = urllib.parse.urlsplit(text)
    if parts.password is None:
        return repr(text)
    netloc = parts.netloc.rsplit("@", 1)[1]
    return repr(urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")))


def tls_context(url: RedisUrl, ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ClientContext:
    """The context for `rediss://`: the server checked against `ca` (or the system's), our certificate shown."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ClientContext(ctx, url.host)


class RedisConnection:
    """One connection (see the module docstring); `command` and `pipeline` are safe from many tasks."""

    def __init__(self, stream: trio.abc.Stream, peer: str, *, timeout_s: float) -> None:
        self.stream = stream
        self.peer = peer
        self.timeout_s = timeout_s
        self._parser = RespParser()
        self._lock = trio.Lock()
        self.closed = False

    async def command(self, *args: str | bytes | int | float) -> Reply:
        """Send one command, return its reply; RedisError on an error reply."""
        (reply,) = await self.pipeline([args])
        if isinstance(reply, ReplyError):
            raise RedisError(self.peer, f"{_name(args)}: {reply.message}")
        return reply

    async def pipeline(self, commands: Sequence[Sequence[str | bytes | int | float]]) -> list[Reply]:
        """Send every command in one write, return every reply (error replies as ReplyError values)."""
        if not commands:
            return []
        data = b"".join(encode_command(*c) for c in commands)
        async with self._lock:
            self._check_open()
            try:
                with trio.fail_after(self.timeout_s):
                    await self.stream.send_all(data)
                    return [await self._read() for _ in commands]
            except BaseException as exc:
                # a request whose reply was not read leaves the connection out of step: it is done
                await self._fail()
                raise _translate(exc, self.peer, _name(commands[0])) from None

    async def read_push(self) -> Reply:
        """The next message on a subscribed connection (no timeout: pub/sub is quiet when nothing happens)."""
        async with self._lock:
            self._check_open()
            try:
                return await self._read()
            except BaseException as exc:
                await self._fail()
                raise _translate(exc, self.peer, "reading") from None

    async def send_only(self, *args: str | bytes | int | float) -> None:
        """Send a command whose answer comes as a push (SUBSCRIBE on a subscribed connection)."""
        self._check_open()
        try:
            with trio.fail_after(self.timeout_s):
                await self.stream.send_all(encode_command(*args))
        except BaseException as exc:
            await self._fail()
            raise _translate(exc, self.peer, _name(args)) from None

    def _check_open(self) -> None:
        if self.closed:
            raise RedisError(self.peer, "the connection was closed after an earlier failure")

    async def _read(self) -> Reply:
        while True:
            reply = self._parser.next_reply()
            if reply is not NEED_DATA:
                return reply
            data = await self.stream.receive_some(_RECEIVE_BYTES)
            if not data:
                raise RedisError(self.peer, "the server closed the connection")
            self._parser.receive_data(data)

    async def _fail(self) -> None:
        self.closed = True
        await trio.aclose_forcefully(self.stream)

    async def aclose(self) -> None:
        self.closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await self.stream.aclose()


def _name(args: Sequence[str | bytes | int | float]) -> str:
    first = args[0] if args else "?"
    return first.decode(errors="replace") if isinstance(first, bytes) else str(first)


def _translate(exc: BaseException, peer: str, what: str) -> BaseException:
    """Foreign failures as one RedisError; cancellation and our own errors pass."""
    if isinstance(exc, RedisError) or isinstance(exc, trio.Cancelled) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, trio.TooSlowError):
        return RedisError(peer, f"{what}: no answer in time")
    if isinstance(exc, RespProtocolError):
        return RedisError(peer, f"{what}: not RESP: {exc}")
    if isinstance(exc, PeerGone | TlsRefused):
        return RedisError(peer, f"{what}: {exc.reason}")
    if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
        return RedisError(peer, f"{what}: connection lost: {exc}")
    return exc


async def _connect(url: RedisUrl, context: ClientContext | None, timeout_s: float) -> RedisConnection:
    peer = url.address
    stream: trio.abc.Stream
    try:
        with trio.fail_after(timeout_s):
            if url.tls:
                if context is None:
                    context = tls_context(url, None)
                stream = await open_tls_connection(url.host, url.port, context, handshake_timeout_s=timeout_s)
            else:
                stream = await trio.open_tcp_stream(url.host, url.port)
    except trio.TooSlowError:
        raise RedisError(peer, f"no connection within {timeout_s:g} s") from None
    except TlsRefused as exc:
        raise RedisError(peer, f"TLS refused: {exc.reason}") from None
    except OSError as exc:
        raise RedisError(peer, f"cannot connect: {exc.strerror or exc}") from None
    connection = RedisConnection(stream, peer, timeout_s=timeout_s)
    try:
        if url.password is not None:
            auth = ("AUTH", url.username, url.password) if url.username else ("AUTH", url.password)
            await connection.command(*auth)
        if url.db:
            await connection.command("SELECT", url.db)
    except BaseException:
        await connection.aclose()
        raise
    return connection


@asynccontextmanager
async def open_redis(
    url: RedisUrl, *, context: ClientContext | None = None, timeout_s: float = 5.0
) -> AsyncIterator[RedisConnection]:
    """A connection, authenticated and on its database, closed on exit."""
    connection = await _connect(url, context, timeout_s)
    try:
        yield connection
    finally:
        await connection.aclose()


class Subscription:
    """A connection in pub/sub mode: `receive()` gives the next (channel, payload) of SUBSCRIBE'd channels."""

    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection

    async def subscribe(self, *channels: str) -> None:
        """Subscribe and wait for each confirmation (so a PUBLISH after this is seen)."""
        await self.connection.send_only("SUBSCRIBE", *channels)
        confirmed = 0
        while confirmed < len(channels):
            with trio.fail_after(self.connection.timeout_s):
                reply = _items(await self.connection.read_push())
            if reply and reply[0] == b"subscribe":
                confirmed += 1

    async def receive(self) -> tuple[str, bytes]:
        """The next (channel, payload) published on a subscribed channel."""
        while True:
            reply = _items(await self.connection.read_push())
            if len(reply) == 3 and reply[0] == b"message":
                channel, payload = reply[1], reply[2]
                if isinstance(channel, bytes) and isinstance(payload, bytes):
                    return channel.decode(errors="replace"), payload


def _items(reply: Reply) -> list[Reply]:
    if isinstance(reply, Push):
        return reply.items
    if isinstance(reply, ReplyError):
        raise RedisError("redis", f"pub/sub: {reply.message}")
    return reply if isinstance(reply, list) else []


@asynccontextmanager
async def open_subscription(
    url: RedisUrl, channels: Sequence[str], *, context: ClientContext | None = None, timeout_s: float = 5.0
) -> AsyncIterator[Subscription]:
    """A dedicated connection subscribed to `channels` (confirmed before this yields)."""
    async with open_redis(url, context=context, timeout_s=timeout_s) as connection:
        subscription = Subscription(connection)
        await subscription.subscribe(*channels)
        yield subscription


def seconds(value: float) -> int:
    """An expiry in whole seconds for SET ... EX (at least 1)."""
    return max(1, math.ceil(value))
