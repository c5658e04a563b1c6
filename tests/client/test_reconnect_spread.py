"""Reconnecting: the longer the gateway was away, the wider clients spread their redials.

A real `TunnelClient` dials a loopback port where nothing listens (each
attempt a real, refused TCP connect) on trio's autojump clock, so fifteen
simulated minutes of an absent gateway take a moment; the delays it chose
are read from its log lines.  And a gateway that is busy says when to come
back: the client waits that, not its own guess.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from redirgate.cli.lab import make_pki, write_client_config
from redirgate.client.config import load_client_config
from redirgate.client.service import ClientService
from redirgate.client.tunnel import reconnect_delay
from redirgate.proto import tunnel as t

_DELAY = re.compile(r"reconnecting in ([0-9.]+) s")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.usefixtures("autojump_clock")
async def test_redials_spread_over_the_whole_window_while_the_gateway_is_away(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="redirgate.client.tunnel")
    make_pki(tmp_path)
    config = load_client_config(write_client_config(tmp_path, closed_port()))
    client = ClientService(config).client
    random.seed(15)
    with trio.move_on_after(900):  # simulated: the gateway is away for 15 minutes
        await client.run()
    delays = [float(m.group(1)) for r in caplog.records if (m := _DELAY.search(r.getMessage()))]
    first, late = delays[0], delays[len(delays) // 2 :]
    assert first <= config.reconnect_min_s  # the first redial after a loss is quick
    assert len(late) >= 20
    # long away: drawn from the whole window up to reconnect_max_s, not only its upper half
    assert min(late) < config.reconnect_max_s / 4 and max(late) > config.reconnect_max_s * 0.75, late


def test_the_window_grows_with_how_long_the_gateway_was_away() -> None:
    rng = random.Random(15)
    for away in (0.0, 5.0, 20.0, 60.0):
        draws = [reconnect_delay(0, away, min_s=0.5, max_s=30.0, rng=rng) for _ in range(500)]
        window = min(30.0, max(0.5, away))
        assert max(draws) <= window and max(draws) > 0.9 * window and min(draws) < 0.25 * window + 0.25


_HINTED = re.compile(r"retry after ([0-9.]+) s\); reconnecting in ([0-9.]+) s")


async def _client_against(
    tmp_path: Path, gateway: Callable[[trio.SocketStream], Awaitable[None]], done: trio.Event
) -> None:
    """A real client dialling `gateway` (a TCP handler on 127.0.0.1) until `done` is set."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, gateway, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        client = ClientService(load_client_config(write_client_config(tmp_path, port))).client
        nursery.start_soon(client.run)
        with trio.fail_after(60):  # a safety net only
            await done.wait()
        nursery.cancel_scope.cancel()


async def test_a_busy_gateways_hint_is_honoured_and_it_grows_with_the_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real client against a gateway that turns every dial away with a busy line (the real
    gateway's bytes, `proto.tunnel.busy`) whose hint doubles: each redial waits the hint (its log
    says so), not its own backoff.  Real time: the hints are short."""
    caplog.set_level(logging.INFO, logger="redirgate.client.tunnel")
    make_pki(tmp_path)
    hints = [0.05 * 2**i for i in range(5)]
    told = trio.Event()

    async def busy_gateway(tcp: trio.SocketStream) -> None:
        async with tcp:
            served = len(handed)
            handed.append(hints[min(served, len(hints) - 1)])
            await tcp.send_all(t.busy_line(handed[-1]))
            if len(handed) > len(hints):
                told.set()

    handed: list[float] = []
    await _client_against(tmp_path, busy_gateway, told)
    seen = [(float(m.group(1)), float(m.group(2))) for r in caplog.records if (m := _HINTED.search(r.getMessage()))]
    assert [hint for hint, _ in seen[: len(hints)]] == hints, seen
    for hint, delay in seen:
        assert hint <= delay <= hint * 1.1 + 0.05, seen  # the hint, plus at most its jitter (0.05: the log's rounding)


async def test_a_busy_gateways_ticket_goes_back_first_on_the_next_dial_there(tmp_path: Path) -> None:
    """A gateway that turns the client away hands it a place in its queue (the ticket on the busy
    line's second line); the client's next dial to it starts with that ticket line, before its TLS
    ClientHello, so the gateway can admit it at its place; the dial after that (not turned away
    with a ticket) starts with TLS again."""
    make_pki(tmp_path)
    ticket = b"0123456789abcdef0123456789ab"
    firsts: list[bytes] = []
    done = trio.Event()

    async def busy_gateway(tcp: trio.SocketStream) -> None:
        async with tcp:
            first = b""
            while len(first) <= len(t.ticket_line(ticket)):  # the first bytes: a ticket line, or its ClientHello
                more = await tcp.receive_some(4096)
                if not more:
                    break
                first += more
            firsts.append(first)
            if len(firsts) == 1:
                await tcp.send_all(t.busy_line(0.05, ticket))
            elif len(firsts) == 2:
                await tcp.send_all(t.busy_line(0.05))  # busy again, no ticket this time
            else:
                done.set()

    await _client_against(tmp_path, busy_gateway, done)
    assert firsts[0][0] == 0x16  # a TLS handshake record: no ticket yet
    assert firsts[1].startswith(t.ticket_line(ticket)), firsts[1][:60]
    assert firsts[1][len(t.ticket_line(ticket))] == 0x16  # then its ClientHello
    assert firsts[2][0] == 0x16  # the ticket is sent once
