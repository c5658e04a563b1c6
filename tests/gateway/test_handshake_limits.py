"""Handshake limits on the TLS listeners, and a gateway that runs out of file descriptors.

Strangers open TCP connections to the tunnel port and never start TLS (each
would hold a handshake until handshake_timeout_s).  In-process lab for the
limits; `redirgate gateway run` as a real process with a lowered
RLIMIT_NOFILE for the descriptor test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.gateway.admin import read_status
from redirgate.gateway.config import load_config
from redirgate.gateway.limits import REFUSAL_LINES_PER_INTERVAL
from redirgate.vmside.probe import probe
from tests.support.gateway_procs import running_client, running_gateway
from tests.support.tunnel_lab import running_lab
from tests.support.waiting import until, until_async

KBD = LabRoute("kbd", "usb:1209:0002")
ADMISSION_LOG = "redirgate.gateway.admission"


async def closed_by_peer(tcp: trio.SocketStream, closed: trio.MemorySendChannel[trio.SocketStream]) -> None:
    """Read `tcp` until the gateway closes it; say so on `closed`."""
    try:
        while await tcp.receive_some(1024):
            pass
    except trio.BrokenResourceError:
        pass
    except trio.ClosedResourceError:
        return  # we closed it ourselves
    await closed.send(tcp)


async def poll(check: Callable[[], object]) -> None:
    """Until `check()` is true: state of the gateway process (its files, its admin socket) or of
    another task, which no trio event announces here; run in a thread as it may block."""
    await until_async(lambda: trio.to_thread.run_sync(check))


async def test_handshakes_are_limited_per_source_and_in_all(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    options = {"max_handshakes": 6, "max_handshakes_per_source": 4, "handshake_timeout_s": 120}
    async with running_lab(tmp_path, [KBD], virtual=["virtual:keyboard"], **options) as lab:  # type: ignore[arg-type]
        gate = lab.gateway.tunnel.gate
        send_closed, closed = trio.open_memory_channel[trio.SocketStream](100)
        async with AsyncExitStack() as stack, trio.open_nursery() as nursery:

            async def stranger(source: str) -> trio.SocketStream:
                tcp = await trio.open_tcp_stream("127.0.0.1", lab.tunnel_port, local_address=source)
                await stack.enter_async_context(tcp)
                nursery.start_soon(closed_by_peer, tcp, send_closed)
                return tcp

            async def until_closed(count: int) -> None:
                with trio.fail_after(60):  # a safety net far below handshake_timeout_s
                    for _ in range(count):
                        await closed.receive()

            for _ in range(10):  # one source: 4 may handshake, 6 are closed at once
                await stranger("127.0.0.2")
            await until_closed(6)
            assert gate.in_progress == 4 and dict(gate.by_source) == {"127.0.0.2": 4}
            others = []
            for _ in range(4):  # another source: 2 more fit under max_handshakes = 6
                others.append(await stranger("127.0.0.3"))
            await until_closed(2)
            assert gate.in_progress == 6 and dict(gate.by_source) == {"127.0.0.2": 4, "127.0.0.3": 2}
            assert lab.gateway.snapshot()["counters"]["handshakes_refused"] == 8
            metered = lab.gateway.events.registry.get_sample_value(
                "redirgate_bounded_total", {"counter": "handshakes_refused"}
            )
            assert metered == 8
            # the gate is full, so the real client's next data connection would be refused too;
            # once two strangers leave, it gets its slot again
            for tcp in others:
                await tcp.aclose()
            await poll(lambda: gate.in_progress == 4)
            result = await probe("127.0.0.1", lab.route_port("kbd"), timeout_s=30)
            assert (result.vendor_id, result.product_id) == (0x1209, 0x0002)
            nursery.cancel_scope.cancel()
        lines = [r.getMessage() for r in caplog.records if r.name == ADMISSION_LOG]
        assert len(lines) == 1 and "too many TLS handshakes at once" in lines[0], lines  # once per interval


async def test_out_of_file_descriptors_is_one_line_and_the_gateway_recovers(tmp_path: Path) -> None:
    make_pki(tmp_path)
    config = write_gateway_config(
        tmp_path,
        [KBD],
        handshake_timeout_s=120,
        max_handshakes=100000,
        max_handshakes_per_source=100000,
        handshake_pacing_s=0,  # no pacing: nothing but the descriptors stops the strangers
        limit_log_interval_s=600,
    )
    strangers = 300
    with running_gateway(config, tmp_path / "gateway.log", nofile=96) as gw:
        client_config = write_client_config(tmp_path, gw.tunnel_port, virtual=["virtual:keyboard"])
        with running_client(client_config, tmp_path / "client.log"):
            admin = tmp_path / "gateway.sock"
            await poll(lambda: any(c["identity"] == "thin-01" for c in read_status(admin)["clients"]))
            async with AsyncExitStack() as stack:
                for _ in range(strangers):
                    await stack.enter_async_context(await trio.open_tcp_stream("127.0.0.1", gw.tunnel_port))
                await poll(lambda: "EMFILE" in gw.log())
                await trio.sleep(1.0)  # let it retry accept() a few times while the descriptors are gone
            # the strangers are gone: the gateway finds its descriptors again by itself
            result = await probe("127.0.0.1", gw.routes["kbd"], timeout_s=60)
            assert (result.vendor_id, result.product_id) == (0x1209, 0x0002)
            log = gw.log()
            assert "Traceback" not in log, log[-3000:]
            lines = [line for line in log.splitlines() if "EMFILE" in line]
            # one line per listener that ran out (the tunnel, maybe the route the probe dialled meanwhile)
            listeners = [line.split(": cannot accept connections")[0].rsplit(": ", 1)[-1] for line in lines]
            assert "tunnel" in listeners and len(listeners) == len(set(listeners)), lines


async def test_a_failed_handshake_storm_is_a_few_lines_and_one_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_lab(tmp_path, [KBD], virtual=["virtual:keyboard"], limit_log_interval_s=600) as lab:
        start = len(caplog.records)
        storm = 40
        for _ in range(storm):  # not TLS at all
            async with await trio.open_tcp_stream("127.0.0.1", lab.tunnel_port) as tcp:
                await tcp.send_all(b"GET / HTTP/1.1\r\n\r\n")
                try:
                    while await tcp.receive_some(1024):
                        pass
                except trio.BrokenResourceError:
                    pass
        await until(lambda: lab.gateway.tunnel.refusals == storm)
        lab.gateway.tunnel.refusal_log.flush()  # what the gateway's ticker does at the interval's end
        lines = [
            r.getMessage()
            for r in caplog.records[start:]
            if r.name == "redirgate.gateway.tunnel_server" and "refused" in r.getMessage()
        ]
        assert len(lines) == REFUSAL_LINES_PER_INTERVAL + 1, lines
        assert f"{storm - REFUSAL_LINES_PER_INTERVAL} more refused connection(s)" in lines[-1], lines[-1]
        assert "not TLS (garbage)" in lines[-1]


async def test_a_reload_applies_new_handshake_limits(tmp_path: Path) -> None:
    """SIGHUP's reload: the next connections are admitted under the new `[gateway]` handshake limits
    (the tunnel port and every route), and pacing can be turned off and on again."""
    options = {"max_handshakes": 20, "max_handshakes_per_source": 16, "handshake_timeout_s": 120}
    async with running_lab(tmp_path, [KBD], virtual=["virtual:keyboard"], **options) as lab:  # type: ignore[arg-type]
        gate = lab.gateway.tunnel.gate
        assert gate.pacer is not None
        tighter = {**options, "max_handshakes_per_source": 2, "handshake_pacing_s": 0}
        await lab.gateway.reload(load_config(write_gateway_config(tmp_path, [KBD], **tighter)))
        assert gate.pacer is None and gate.limits.max_per_source == 2
        assert lab.gateway.routes[0].gate.limits == gate.limits
        send_closed, closed = trio.open_memory_channel[trio.SocketStream](100)
        async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
            for _ in range(5):  # one source: 2 may handshake now (16 before the reload), 3 are closed at once
                tcp = await trio.open_tcp_stream("127.0.0.1", lab.tunnel_port, local_address="127.0.0.2")
                await stack.enter_async_context(tcp)
                nursery.start_soon(closed_by_peer, tcp, send_closed)
            with trio.fail_after(60):  # a safety net far below handshake_timeout_s
                for _ in range(3):
                    await closed.receive()
            assert gate.in_progress == 2 and lab.gateway.snapshot()["counters"]["handshakes_refused"] == 3
            nursery.cancel_scope.cancel()
        await lab.gateway.reload(load_config(write_gateway_config(tmp_path, [KBD], **options)))
        assert gate.pacer is not None and gate.limits.max_per_source == 16
