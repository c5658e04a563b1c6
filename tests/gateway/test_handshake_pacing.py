"""A storm of handshakes past the admission limit: paced, told when to come back, nothing abandoned.

An in-process gateway (`running_lab`) with max_handshakes = 4, and a storm
of real mutual-TLS 1.3 dials (the lab's client certificate) on real
sockets: all connect before any speaks TLS, so the gateway meets them at
once.  Each dialler does what the real client does with a
refusal: waits `reconnect_delay(...)` (the client's own function, which
honours the gateway's hint) and dials again.  Nothing here measures time.
"""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import pytest
import trio

from redirgate.cli.lab import GATEWAY_NAME
from redirgate.client.tunnel import reconnect_delay
from redirgate.gateway import pki
from redirgate.gateway.limits import MAX_RETRY_AFTER_S, HandshakePacer
from redirgate.transport import (
    BusyTickets,
    ClientContext,
    TlsRefused,
    ZeroCopyTLSStream,
    client_context,
    open_tls_connection,
)
from tests.support.tunnel_lab import Lab, running_lab
from tests.support.waiting import until

STORM = 48
LIMIT = 4
ADMISSION_LOG = "redirgate.gateway.admission"
_SUMMARY = re.compile(r"(\d+) connection\(s\) turned away at once since the last such line")


class Storm:
    """What the diallers saw: the hints, in the order they came, and anything that is not a hint."""

    def __init__(self) -> None:
        self.hints: list[float] = []
        self.other: list[TlsRefused] = []
        self.streams: list[ZeroCopyTLSStream] = []


async def storm(lab: Lab) -> Storm:
    """STORM diallers: all connect TCP first, so the gateway meets them at once (it admits LIMIT, waiting
    for their ClientHello, and will turn the rest away once their first bytes say whether they bring a
    place in its queue), then each speaks TLS and, when turned away, dials
    again after the client's `reconnect_delay`."""
    base = lab.directory / "pki"
    ident = pki.client_dir(base, "thin-01")
    context = client_context(ident / "client-cert.pem", ident / "client-key.pem", base / "ca-cert.pem", GATEWAY_NAME)
    seen = Storm()
    first = [await trio.open_tcp_stream("127.0.0.1", lab.tunnel_port) for _ in range(STORM)]
    tunnel = lab.gateway.tunnel
    # LIMIT admitted, the rest waiting for their first bytes (a ticket line, or the ClientHello) to be turned away
    await until(
        lambda: tunnel.gate.in_progress == LIMIT and tunnel.busy_waiting == STORM - LIMIT, "the storm met at once"
    )

    async def dialler(tcp: trio.SocketStream) -> None:
        sock = socket.socket(fileno=tcp.socket.detach())
        stream = ZeroCopyTLSStream(sock, context.ssl_context, server_side=False, server_hostname=GATEWAY_NAME)
        while True:
            try:
                await stream.do_handshake(120)
            except TlsRefused as exc:
                await trio.aclose_forcefully(stream)
                if exc.retry_after_s is None:
                    seen.other.append(exc)  # a refusal without a hint (or an abandoned handshake): the test fails
                    return
                seen.hints.append(exc.retry_after_s)
                await trio.sleep(reconnect_delay(0, 0.0, min_s=0.5, max_s=30.0, retry_after_s=exc.retry_after_s))
                stream = await open_tls_connection_lazily(lab.tunnel_port, context)
                continue
            seen.streams.append(stream)
            return

    with trio.fail_after(300):  # a safety net only
        async with trio.open_nursery() as nursery:
            for tcp in first:
                nursery.start_soon(dialler, tcp)
    return seen


async def open_tls_connection_lazily(port: int, context: ClientContext) -> ZeroCopyTLSStream:
    """A TCP connection wrapped for TLS, the handshake not started (the caller runs it)."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    sock = socket.socket(fileno=tcp.socket.detach())
    return ZeroCopyTLSStream(sock, context.ssl_context, server_side=False, server_hostname=context.server_name)


async def test_a_storm_past_the_limit_all_connect_told_when_to_come_back_none_abandoned(tmp_path: Path) -> None:
    options = {"max_handshakes": LIMIT, "handshake_timeout_s": 120, "handshake_pacing_s": 0.2}
    async with running_lab(tmp_path, [], start_client_now=False, **options) as lab:  # type: ignore[arg-type]
        seen = await storm(lab)
        try:
            assert not seen.other, [str(e) for e in seen.other]
            assert len(seen.streams) == STORM  # every dialler connected in the end
            counters = lab.gateway.snapshot()["counters"]
            # turned away before any handshake, each with a hint: nothing started was left unfinished
            assert counters.get("handshakes_abandoned", 0) == 0, counters
            assert counters["handshakes_told_to_retry"] == len(seen.hints) >= STORM - LIMIT, counters
            # the hints are slots in one queue: the later ones wait longer
            assert max(seen.hints) > 2 * min(seen.hints), seen.hints
        finally:
            for stream in seen.streams:
                await stream.aclose()


async def test_what_was_turned_away_is_one_line_per_interval_that_counts_it_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    interval = 0.5
    options = {
        "max_handshakes": LIMIT,
        "handshake_timeout_s": 120,
        "handshake_pacing_s": 0.2,
        "limit_log_interval_s": interval,
    }
    async with running_lab(tmp_path, [], start_client_now=False, **options) as lab:  # type: ignore[arg-type]
        started = trio.current_time()
        seen = await storm(lab)
        try:
            refused = lab.gateway.snapshot()["counters"]["handshakes_refused"]
            assert refused == len(seen.hints) > 0

            def counted() -> list[int]:
                return [
                    int(m.group(1))
                    for r in caplog.records
                    if r.name == ADMISSION_LOG and (m := _SUMMARY.search(r.getMessage()))
                ]

            # the storm's end is told too: the gateway's ticker writes what the last line did not count
            await until(lambda: sum(counted()) == refused, "the summary lines to count every refusal")
            lines = counted()
            elapsed = trio.current_time() - started
            assert len(lines) <= elapsed / interval + 2, (lines, elapsed)  # at most one per interval (and the first)
        finally:
            for stream in seen.streams:
                await stream.aclose()


def test_the_pacers_limit_follows_the_handshake_time_and_its_hints_queue_up() -> None:
    """The bookkeeping alone, on a made-up clock: handshakes slower than pacing_s shrink the limit,
    quicker ones grow it (only while it is reached) up to max_handshakes; each hint is a later slot."""
    pacer = HandshakePacer(1.0, 256)
    start, now = pacer.limit, 0.0
    for _ in range(40):  # a starved gateway: 4 s a handshake
        now += 0.1
        assert pacer.full(int(pacer.limit))
        pacer.finished(now, 4.0)
    assert pacer.limit < start / 2
    assert pacer.stall_after_s() > 4.0  # its slow handshakes are not taken for stalled ones
    slow = pacer.limit
    for _ in range(100):  # quick handshakes, but nobody waiting: the limit stays
        now += 0.1
        pacer.finished(now, 0.01)
    assert pacer.limit == slow
    for _ in range(200):  # quick handshakes and the limit reached: it grows, up to max_handshakes
        now += 0.05
        pacer.full(int(pacer.limit))
        pacer.finished(now, 0.01)
    assert pacer.limit == 256
    hints = [pacer.retry_after(now, 256) for _ in range(50)]
    assert hints == sorted(hints) and hints[-1] > hints[0]


def test_a_herd_turned_away_before_any_handshake_finished_is_not_booked_over_minutes() -> None:
    """A restarted gateway turns most of its herd away before its first handshake finished: the hints
    then guess a quick handshake (too early costs a client one more busy line), not `pacing_s` (64
    running / 2.5 s: 10,000 clients booked at 25 a second, most capped at the 60 s maximum)."""
    pacer = HandshakePacer(2.5, 256)
    assert pacer.full(64)
    hints = [pacer.retry_after(0.0, 64) for _ in range(10_000)]
    assert hints[-1] < 30.0, hints[-1]


async def test_a_client_back_with_its_ticket_is_admitted_at_its_place_past_the_paced_limit(tmp_path: Path) -> None:
    """The paced limit (PACER_START young handshakes) held by silent connections: a client turned away
    gets a place in the queue (a ticket on the busy line); back with it once the queue reached its
    place, it is admitted though the limit is still reached, while a dial without a ticket (a new place
    at the end) is turned away, and one with a forged ticket too.  A client admitted while there is room
    may still send its ticket first: the gateway takes the line and OpenSSL the rest."""
    options = {"max_handshakes": 200, "max_handshakes_per_source": 200, "handshake_timeout_s": 120}
    async with running_lab(tmp_path, [], start_client_now=False, **options) as lab:  # type: ignore[arg-type]
        tunnel = lab.gateway.tunnel
        pacer = tunnel.gate.pacer
        assert pacer is not None
        base = lab.directory / "pki"
        ident = pki.client_dir(base, "thin-01")
        context = client_context(
            ident / "client-cert.pem", ident / "client-key.pem", base / "ca-cert.pem", GATEWAY_NAME
        )
        silent = [await trio.open_tcp_stream("127.0.0.1", lab.tunnel_port) for _ in range(int(pacer.limit))]
        streams: list[ZeroCopyTLSStream] = []
        try:
            await until(lambda: tunnel.gate.in_progress == len(silent), "the paced limit held by silent connections")
            mine, other = BusyTickets(), BusyTickets()
            with pytest.raises(TlsRefused) as turned:
                await open_tls_connection("127.0.0.1", lab.tunnel_port, context, tickets=mine)
            assert turned.value.retry_after_s is not None and len(mine) == 1  # a place, and its ticket
            with pytest.raises(TlsRefused):  # no ticket: a new place at the end
                await open_tls_connection("127.0.0.1", lab.tunnel_port, context, tickets=other)
            forged = BusyTickets()
            forged.keep("127.0.0.1", lab.tunnel_port, b"0" * 28)
            with pytest.raises(TlsRefused):  # a ticket this gateway did not sign holds no place
                await open_tls_connection("127.0.0.1", lab.tunnel_port, context, tickets=forged)
            # the first place is at the head of the queue: back with its ticket, it is admitted at once
            streams.append(await open_tls_connection("127.0.0.1", lab.tunnel_port, context, tickets=mine))
            assert tunnel.counters["handshakes_admitted_at_place"] == 1
            assert tunnel.counters.get("handshakes_abandoned", 0) == 0
            assert tunnel.gate.in_progress >= len(silent)  # the silent ones still hold the paced limit
        finally:
            for tcp in silent:
                await tcp.aclose()
        # room again: a client that still holds a ticket sends it first, and is admitted as any other
        await until(lambda: tunnel.gate.in_progress == 0, "the silent connections gone")
        assert len(other) == 1
        streams.append(await open_tls_connection("127.0.0.1", lab.tunnel_port, context, tickets=other))
        assert len(other) == 0
        for stream in streams:
            await stream.aclose()


def test_a_place_booked_at_a_low_rate_is_priced_again_at_todays_rate_and_the_far_end_is_spread() -> None:
    """The bookkeeping alone, on a made-up clock: a restarted gateway measures a low rate while it turns
    its herd away, and books thousands then.  No hint tells more than the horizon, and those past it
    are spread over its second half (before: all told exactly the 60 s cap, so all came back together
    to a gateway idle since); a client back with its ticket once the rate rose keeps its place (not
    put at the end, behind those booked since) and is told a shorter wait."""
    pacer = HandshakePacer(0.5, 256)
    assert pacer.horizon_s() < MAX_RETRY_AFTER_S
    now = 0.0
    for _ in range(40):  # the herd's first second: 20 handshakes a second finish while the limit is reached
        now += 0.05
        assert pacer.full(int(pacer.limit))
        pacer.finished(now, 2.0)
    slow = pacer.rate
    assert slow is not None and slow < 25
    booked = [pacer.book(now, int(pacer.limit)) for _ in range(5_000)]
    assert max(hint for hint, _ in booked) <= pacer.horizon_s()
    # the far end is spread over the horizon's second half, not told all the same wait (a storm then)
    far = [hint for hint, _ in booked[-1_000:]]
    assert min(far) >= pacer.horizon_s() / 2 and max(far) - min(far) > pacer.horizon_s() / 3, (min(far), max(far))
    _, late_ticket = booked[2_000]
    for _ in range(4_000):  # then over a hundred a second, for 20 s
        now += 0.005
        pacer.full(int(pacer.limit))
        pacer.finished(now, 0.3)
    assert pacer.rate is not None and pacer.rate > 4 * slow
    again, same = pacer.book(now, int(pacer.limit), late_ticket)
    assert same == late_ticket  # its place kept
    _, newcomer = pacer.book(now, int(pacer.limit))
    assert pacer.place(same) < pacer.place(newcomer)  # a newcomer queues behind it
    assert again < pacer.horizon_s() / 2  # told the rest at today's rate: sooner than anyone past the horizon


async def test_a_ticket_line_is_taken_before_the_handshake_with_pacing_off_too(tmp_path: Path) -> None:
    """A client may hold a ticket from before a reload turned pacing off (or from another gateway
    process): its first bytes are the ticket line, then TLS; the gateway takes the line and the
    handshake goes on."""
    options = {"handshake_pacing_s": 0}
    async with running_lab(tmp_path, [], start_client_now=False, **options) as lab:  # type: ignore[arg-type]
        assert lab.gateway.tunnel.gate.pacer is None
        base = lab.directory / "pki"
        ident = pki.client_dir(base, "thin-01")
        context = client_context(
            ident / "client-cert.pem", ident / "client-key.pem", base / "ca-cert.pem", GATEWAY_NAME
        )
        held = BusyTickets()
        held.keep("127.0.0.1", lab.tunnel_port, b"0123456789abcdef0123456789ab")
        stream = await open_tls_connection("127.0.0.1", lab.tunnel_port, context, tickets=held)
        assert len(held) == 0
        await stream.aclose()
