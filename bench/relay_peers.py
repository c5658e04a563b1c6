"""The processes of the relay benchmark: load generator, sink, and redirgate's relay.

Run as ``python bench/relay_peers.py ROLE ...`` by :mod:`bench.relay`, one
process per role, so that the relay under test, the sender and the receiver
each have their own interpreter (no GIL shared between them) and the
relay's CPU can be read from ``/proc/PID/stat`` like socat's, stunnel's or
haproxy's.  Roles:

``sink``      the "QEMU" side: listens on 127.0.0.1, serves one connection
              at a time, forever.  Plain TCP, or TLS with ``--tls``.
``source``    the "thin client" side: dials, runs one measurement, prints one
              JSON line and exits.  Plain TCP, or TLS 1.3 with ``--tls``.
``redirgate`` redirgate's relay on trio: accepts on 127.0.0.1 (TLS with
              ``--tls``, else plain), dials the sink in plain TCP, and runs
              ``redirgate.transport.relay`` between the two.

The source opens each connection with a 16-byte header (``HEADER``): the
mode and its parameter.  Throughput (``T``, N bytes): the source writes N
bytes in 1 MiB ``sendall`` calls, the sink reads them with ``recv_into``
into a 1 MiB buffer and answers one byte when it has all N; the source
times from its first write to that byte.  Round trip (``R``, count): the
source sends 64 bytes, the sink echoes them, the source waits for all 64
before the next; each iteration is timed with ``perf_counter_ns``.

The load generator uses blocking stdlib sockets and ``ssl`` only (no trio,
no redirgate), so what it costs is independent of the code under test.
Never listens or dials anywhere but 127.0.0.1; never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import ssl
import struct
import sys
import time
from typing import Any

HEADER = struct.Struct("!4sc3xQ")  # magic, mode (b"T" or b"R"), count
MAGIC = b"RGB1"
LOOPBACK = "127.0.0.1"
IO_BYTES = 1 << 20  # per sendall / recv_into: large, so per-call cost vanishes
RECV_TIMEOUT_S = 60
SERVER_NAME = "gateway.bench"  # the name on the benchmark's gateway certificate


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _recv_exactly(sock: socket.socket, view: memoryview) -> bool:
    """Fill `view`; False if the peer ended first."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _context(server: bool, cert: str, key: str, ca: str) -> ssl.SSLContext:
    """TLS 1.3 with mutual authentication, as the tunnel uses (see transport/tls.py)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if server:
        ctx.num_tickets = 0
    return ctx


# ------------------------------------------------------------------ sink
def _serve_one(conn: socket.socket) -> None:
    header = bytearray(HEADER.size)
    if not _recv_exactly(conn, memoryview(header)):
        return
    magic, mode, count = HEADER.unpack(header)
    if magic != MAGIC:
        return
    if mode == b"T":
        buf = bytearray(IO_BYTES)
        view = memoryview(buf)
        remaining = count
        while remaining > 0:
            n = conn.recv_into(view[: min(remaining, IO_BYTES)])
            if n == 0:
                return
            remaining -= n
        conn.sendall(b"\x01")
        conn.recv_into(view[:1])  # wait for the source to close first
    elif mode == b"R":
        msg = bytearray(64)
        view = memoryview(msg)
        for _ in range(count):
            if not _recv_exactly(conn, view):
                return
            conn.sendall(view)


def sink(tls: list[str] | None) -> None:
    ctx = _context(True, *tls) if tls else None
    with socket.create_server((LOOPBACK, 0), backlog=16) as listener:
        print(f"LISTEN {listener.getsockname()[1]}", flush=True)
        while True:
            raw, _ = listener.accept()
            _nodelay(raw)
            # A stuck peer must not stall the sink forever; SO_RCVTIMEO keeps the
            # socket blocking (no poll per call, unlike settimeout).
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", RECV_TIMEOUT_S, 0))
            try:
                conn = ctx.wrap_socket(raw, server_side=True) if ctx else raw
                with conn:
                    _serve_one(conn)
            except OSError as exc:  # ssl.SSLError is an OSError
                print(f"sink: connection ended: {exc}", file=sys.stderr, flush=True)
            finally:
                raw.close()


# ---------------------------------------------------------------- source
def source(port: int, tls: list[str] | None, nbytes: int, rtt: int, warmup: int) -> dict[str, object]:
    raw = socket.create_connection((LOOPBACK, port), timeout=RECV_TIMEOUT_S)
    raw.settimeout(None)  # blocking from here on; the parent bounds our lifetime
    _nodelay(raw)
    sock: socket.socket = raw
    out: dict[str, object] = {}
    try:
        if tls:
            sock = _context(False, *tls).wrap_socket(raw, server_hostname=SERVER_NAME)
            out["tls"] = f"{sock.version()} {sock.cipher()[0]}"  # type: ignore[attr-defined,index]  # an SSLSocket here
        if nbytes:
            sock.sendall(HEADER.pack(MAGIC, b"T", nbytes))
            chunk = memoryview(bytes(range(256)) * (IO_BYTES // 256))
            cpu0, t0 = _cpu_s(), time.perf_counter()
            remaining = nbytes
            while remaining >= IO_BYTES:
                sock.sendall(chunk)
                remaining -= IO_BYTES
            if remaining:
                sock.sendall(chunk[:remaining])
            ack = bytearray(1)
            done = _recv_exactly(sock, memoryview(ack))
            seconds = time.perf_counter() - t0
            out.update(bytes=nbytes, seconds=seconds, complete=done, cpu_s=_cpu_s() - cpu0)
        else:
            sock.sendall(HEADER.pack(MAGIC, b"R", rtt + warmup))
            msg = bytearray(b"p" * 64)
            view = memoryview(msg)
            samples: list[int] = []
            clock = time.perf_counter_ns
            for i in range(rtt + warmup):
                t0 = clock()
                sock.sendall(view)
                if not _recv_exactly(sock, view):
                    break
                if i >= warmup:
                    samples.append(clock() - t0)
            samples.sort()
            out["count"] = len(samples)
            if samples:
                out["p50_us"] = samples[len(samples) // 2] / 1000
                out["p99_us"] = samples[min(len(samples) - 1, (len(samples) * 99) // 100)] / 1000
                out["mean_us"] = sum(samples) / len(samples) / 1000
    finally:
        sock.close()
    return out


# ------------------------------------------------------------- redirgate
def redirgate_relay(sink_port: int, tls: list[str] | None, buffer_bytes: int, resumable: bool = False) -> None:
    import trio

    from redirgate.proto import tunnel as t
    from redirgate.transport import (
        PlainSocketStream,
        RelayReactor,
        ResumableStream,
        accept_tls,
        open_plain_connection,
        relay,
        server_context,
    )

    ctx = server_context(*tls) if tls else None

    async def never(why: str) -> tuple[trio.abc.Stream, bytes]:
        raise trio.BrokenResourceError(why)

    def ack_due(ack: t.ChannelAck) -> None:
        return None  # the gateway sends it on the control connection; no peer here reads acks

    async def handle(stream: trio.SocketStream) -> None:
        try:
            a: Any = await accept_tls(stream, ctx) if ctx else PlainSocketStream(stream)
            if resumable:  # the client's side, as the gateway has it for a resumable channel (issue 16)
                a = ResumableStream(a, t.ResumableChannel(1), never, peer="bench", on_ack=ack_due)
            b = await open_plain_connection(LOOPBACK, sink_port)
            await relay(a, b, buffer_size=buffer_bytes, mover=reactor)
        except Exception as exc:  # report and keep serving, like the gateway
            print(f"redirgate relay: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    reactor: RelayReactor | None = None

    async def main() -> None:
        nonlocal reactor
        # like the gateway: the bytes move in the relay reactor thread
        async with RelayReactor(buffer_size=buffer_bytes) as reactor:
            listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
            print(f"LISTEN {listeners[0].socket.getsockname()[1]}", flush=True)
            await trio.serve_listeners(handle, listeners)

    trio.run(main)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["sink", "source", "redirgate"])
    parser.add_argument("--tls", nargs=3, metavar=("CERT", "KEY", "CA"))
    parser.add_argument("--port", type=int, default=0, help="source: where to dial; redirgate: the sink's port")
    parser.add_argument("--bytes", type=int, default=0, help="source: throughput run of this many bytes")
    parser.add_argument("--rtt", type=int, default=0, help="source: this many 64-byte round trips")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--cpu", type=int, help="source: run on this CPU only")
    parser.add_argument("--buffer-bytes", type=int, default=256 * 1024, help="redirgate: relay buffer per direction")
    parser.add_argument("--resumable", action="store_true", help="redirgate: the TLS side is a resumable channel's")
    args = parser.parse_args(argv)
    if args.role == "sink":
        sink(args.tls)
    elif args.role == "redirgate":
        redirgate_relay(args.port, args.tls, args.buffer_bytes, args.resumable)
    else:
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        try:
            result = source(args.port, args.tls, args.bytes, args.rtt, args.warmup)
        except OSError as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
