"""The real client losing its gateway when `gateway` lists several (a cluster's nodes), on real TLS sockets.

Two in-process gateways and a port that takes connections and closes them
at once (a node that is going away: counted).  The rules of
`client/redial.py` as the real `TunnelClient` follows them: a busy node's
retry hint is honoured at that node, not traded for a round of the others
(a second slot booked elsewhere, a dead node's refusal that makes the
client forget the hint and back off).  The policy's other rules, step by
step: tests/client/test_redial.py.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import trio

from redirgate.cli.lab import make_pki, write_client_config, write_gateway_config
from redirgate.gateway.config import load_config
from tests.support.tunnel_lab import start_client, start_gateway
from tests.support.waiting import until


class Closing:
    """A listening port that closes every connection at once (no TLS): counts them."""

    def __init__(self) -> None:
        self.connections = 0

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

        async def handler(stream: trio.SocketStream) -> None:
            self.connections += 1
            await trio.aclose_forcefully(stream)

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, listeners)
            task_status.started(listeners[0].socket.getsockname()[1])


def _list_gateways(path: Path, first: int, ports: list[int]) -> None:
    listed = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    path.write_text(path.read_text().replace(f'"127.0.0.1:{first}"', f"[{listed}]"))


async def test_a_busy_nodes_hint_is_honoured_there_not_traded_for_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's node stops; the live node left is busy (its one handshake slot held by a silent
    connection), the third address refuses every connection.  Once the busy node has told the client
    when to come back, the client comes back there, again and again, and dials nowhere else; when the
    slot frees it is online there."""
    caplog.set_level(logging.INFO, "redirgate.client.tunnel")
    make_pki(tmp_path)
    (tmp_path / "busy").mkdir()
    shutil.copytree(tmp_path / "pki", tmp_path / "busy" / "pki")
    # one young handshake at a time, counted against the pacer for 3 x 60 s: the silent connection holds it
    busy_options = {"max_handshakes": 1, "handshake_timeout_s": 600, "handshake_pacing_s": 60}
    async with trio.open_nursery() as nursery:
        one = await start_gateway(nursery, load_config(write_gateway_config(tmp_path, [])))
        busy = await start_gateway(nursery, load_config(write_gateway_config(tmp_path / "busy", [], **busy_options)))
        closing = Closing()
        closing_port = await nursery.start(closing.serve)
        silent = await trio.open_tcp_stream("127.0.0.1", busy[1].tunnel[1])
        await until(lambda: busy[0].tunnel.gate.in_progress == 1)
        path = write_client_config(tmp_path, one[1].tunnel[1])
        _list_gateways(path, one[1].tunnel[1], [one[1].tunnel[1], busy[1].tunnel[1], closing_port])
        client, _ = await start_client(nursery, path)
        one[2].cancel()  # the client's node goes away
        told = busy[0].tunnel.counters
        await until(lambda: told["handshakes_told_to_retry"] >= 1)
        dialled_elsewhere = closing.connections
        await until(lambda: told["handshakes_told_to_retry"] >= 4)  # it came back three times when told to
        assert closing.connections == dialled_elsewhere  # ... and went nowhere else in between
        hinted = [
            r.getMessage() for r in caplog.records if "busy" in r.getMessage() and "reconnecting" in r.getMessage()
        ]
        assert len(hinted) >= 3 and all("reconnecting in" in line for line in hinted), hinted
        await silent.aclose()  # the slot frees (the silent handshake fails at once)
        await until(lambda: client.online)
        assert client.peer == f"127.0.0.1:{busy[1].tunnel[1]}" and "thin-01" in busy[0].registry.clients
        nursery.cancel_scope.cancel()
