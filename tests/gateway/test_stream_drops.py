"""Iso drops are visible at the gateway: the client tells them (`StreamDrops`), status and metrics show them.

The lab's client exports the emulated loopback; a reference guest (libusbredirparser) on the route
starts an iso OUT stream and sends far more packets than the device can take at once, so the
client's engine drops some (as usbredirhost does).  The client's counts must reach the gateway:
the channel, the route and the client in `gateway status` (and its text), and the
`redirgate_channel_packets_dropped_total` metric; the last ones too, after the guest left.
An older client (no `stream_drops` in its hello) sends nothing and the gateway still serves it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from prometheus_client import generate_latest

from redirgate.cli.gateway_commands import format_status
from redirgate.cli.lab import LabRoute
from redirgate.client import tunnel as client_tunnel
from redirgate.gateway.admin import request
from redirgate.proto import tunnel as t
from tests.support.engine_lab import SUCCESS, processed
from tests.support.refguest import RefGuest, T
from tests.support.system import require_libusbredirparser
from tests.support.tunnel_lab import Lab, running_lab
from tests.support.waiting import until


@pytest.fixture(autouse=True)
def reference_parser() -> None:
    """libusbredirparser, the guest on the route (fails in CI when missing)."""
    require_libusbredirparser()


LOOP = LabRoute("loop", "usb:1209:0003")
SENT = 200  # far more than the 4 slots of the stream, in one go: the device cannot keep up


def _route(lab: Lab) -> dict:
    return next(r for r in lab.gateway.snapshot()["routes"] if r["name"] == "loop")


@asynccontextmanager
async def _guest_on_route(lab: Lab) -> AsyncIterator[RefGuest]:
    """A reference guest on the route, past the client's hello and device announcement."""
    tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("loop"))
    guest = RefGuest(tcp)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(guest.run)
            await guest.expect_next(T.HELLO)
            await guest.expect_announcement()
            yield guest
            nursery.cancel_scope.cancel()
    finally:
        await tcp.aclose()
        guest.close()


async def _flood_iso_out(lab: Lab, *, told: bool = True) -> int:
    """A guest on the route floods an iso OUT stream; the packets the client's engine dropped
    (`told`: once the gateway's channel shows them)."""
    client = lab.client
    assert client is not None
    async with _guest_on_route(lab) as guest:
        # configuration 1 (the device may have it from an earlier channel: then only a status comes)
        configured = await guest.request(T.SET_CONFIGURATION, configuration=1)
        assert configured.fields["status"] == SUCCESS
        # interface 1, alt 1: the loopback's iso endpoints (interface and endpoint infos come first)
        alt = await guest.request(T.SET_ALT_SETTING, interface=1, alt=1)
        assert alt.fields == {"status": SUCCESS, "interface": 1, "alt": 1}
        start = await guest.request(T.START_ISO_STREAM, endpoint=0x02, pkts_per_urb=2, no_urbs=2)
        assert start.fields == {"status": SUCCESS, "endpoint": 0x02}
        for seq in range(SENT):
            await guest.send(T.ISO_PACKET, seq, bytes(100), endpoint=0x02, status=0, length=100)
        await processed(guest)
        (engine,) = client.engines.values()
        dropped = engine.drop_counts()[0]
        assert dropped > 0
        if told:  # while the channel is live
            await until(lambda: (_route(lab)["channel"] or {}).get("iso_out_dropped") == dropped, "the channel's drops")
    return dropped


@pytest.mark.trio_timeout(120)
async def test_iso_out_drops_reach_gateway_status_and_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # no report while the first channel lives: its counts come with the channel's end
    monkeypatch.setattr(client_tunnel, "DROP_REPORT_INTERVAL_S", 3600.0)
    async with running_lab(tmp_path, [LOOP], virtual=["virtual:loopback"]) as lab:
        assert lab.client is not None and lab.client.drop_report_interval_s == 3600.0
        first = await _flood_iso_out(lab, told=False)
        await until(lambda: _route(lab)["iso_out_dropped"] == first, "the last drops, told as the channel ended")
        # reported while the channel lives (a new control session: its report task takes the short
        # interval), and kept over the route's life; the client's count is its session's
        client = lab.client
        client.drop_report_interval_s = 0.05
        socket_path = lab.addresses.admin
        assert socket_path is not None
        reply = await trio.to_thread.run_sync(request, socket_path, {"command": "disconnect", "target": "thin-01"})
        assert reply["ok"], reply
        await until(lambda: client.sessions == 2 and client.online, "the client dialled back")
        second = await _flood_iso_out(lab)
        await until(lambda: _route(lab)["state"] == "idle", "the second channel to end")
        route = _route(lab)
        assert route["iso_out_dropped"] == first + second and route["to_guest_dropped"] == 0
        await until(lambda: lab.gateway.snapshot()["clients"][0]["iso_out_dropped"] == second, "the session's count")
        text = format_status(lab.gateway.snapshot())
        assert f"-> usb:1209:0003 on thin-01: idle; DROPPED {first + second} iso OUT packet(s)" in text
        assert "thin-01 from 127.0.0.1:" in text and f"DROPPED {second} iso OUT packet(s)" in text
        metrics = generate_latest(lab.gateway.events.registry).decode()
        line = 'redirgate_channel_packets_dropped_total{client="thin-01",kind="iso_out",route="loop"} '
        assert f"{line}{float(first + second)}" in metrics


@pytest.mark.trio_timeout(120)
async def test_an_older_gateway_is_told_nothing(tmp_path: Path) -> None:
    """A gateway whose hello does not name the capability (an older one) refuses `StreamDrops` as a
    protocol error: the client must not send it, and the session must live on."""
    async with running_lab(tmp_path, [LOOP], virtual=["virtual:loopback"], start_client_now=False) as lab:
        lab.gateway.tunnel.capabilities = frozenset({t.RESUME_CAPABILITY})
        from tests.support.tunnel_lab import start_client

        assert lab.nursery is not None
        client, _scope = await start_client(lab.nursery, lab.client_config)
        client.drop_report_interval_s = 0.05
        lab.client = client
        assert await _flood_iso_out(lab, told=False) > 0
        await until(lambda: not client.engines, "the client's channel to end")
        # a second channel on the same control connection: its ChannelOpened follows whatever the
        # first channel's end sent, so a refused StreamDrops would have ended this session by then
        async with _guest_on_route(lab):
            pass
        assert client.sessions == 1 and client.online
        assert _route(lab)["iso_out_dropped"] == 0
