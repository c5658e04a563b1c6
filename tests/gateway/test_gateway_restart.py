"""Restarts: the gateway goes away and comes back; a client dies and comes back.

In-process lab (`tests.support.tunnel_lab`) over real mutual TLS on
127.0.0.1.  The gateway restarts on the ports its first run bound, the way a
service manager restarts it with a fixed gateway.toml; the client is never
restarted for that - its reconnect loop (jittered backoff) must find the new
gateway by itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from redirgate.cli.lab import LabRoute, write_client_config
from redirgate.gateway import pki
from redirgate.vmside.guest import GuestError, UsbredirGuest
from redirgate.vmside.probe import probe
from tests.support.tunnel_lab import Lab, running_lab, start_client
from tests.support.waiting import until

KBD = (0x1209, 0x0002)


def online(lab: Lab) -> set[str]:
    return {c["identity"] for c in lab.gateway.snapshot()["clients"]}


async def probe_ok(lab: Lab, route: str) -> None:
    result = await probe("127.0.0.1", lab.route_port(route), timeout_s=60)
    assert (result.vendor_id, result.product_id) == KBD


async def test_client_comes_back_by_itself_after_a_gateway_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_lab(tmp_path, [LabRoute("kbd", "usb:1209:0002")], virtual=["virtual:keyboard"]) as lab:
        client = lab.client
        assert client is not None
        await probe_ok(lab, "kbd")
        ports = (lab.tunnel_port, lab.route_port("kbd"))
        first = lab.gateway

        await lab.stop_gateway()
        await until(lambda: not client.online)
        # while the gateway is down the client keeps dialling (and is refused)
        await until(
            lambda: any(
                r.name == "redirgate.client.tunnel" and "reconnecting" in r.getMessage() and "OSError" in r.getMessage()
                for r in caplog.records
            )
        )
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", ports[1])  # the route port is really closed

        await lab.start_gateway()
        assert lab.gateway is not first and (lab.tunnel_port, lab.route_port("kbd")) == ports
        await until(lambda: client.online and client.sessions == 2 and "thin-01" in online(lab))
        assert lab.client is client  # the same client object, never restarted
        await probe_ok(lab, "kbd")


async def test_client_killed_while_a_guest_holds_a_channel(tmp_path: Path) -> None:
    routes = [LabRoute("one", "usb:1209:0002"), LabRoute("two", "usb:1209:0002", client="thin-02")]
    async with running_lab(tmp_path, routes, virtual=["virtual:keyboard"]) as lab:
        assert lab.client is not None and lab.client_scope is not None
        pki.issue_client(tmp_path / "pki", "thin-02")
        second_config = write_client_config(tmp_path, lab.tunnel_port, name="thin-02", virtual=["virtual:keyboard"])
        async with trio.open_nursery() as nursery:
            second, second_scope = await start_client(nursery, second_config)
            await until(lambda: {"thin-01", "thin-02"} <= online(lab))

            tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("one"))
            async with tcp, UsbredirGuest(tcp, peer="vm one") as guest:
                await guest.wait_device()
                lab.client_scope.cancel()  # thin-01 dies with its channel open
                # the guest side sees its connection end (perhaps after a device_disconnect)
                with pytest.raises(GuestError):  # the runner's safety net ends a wait that never ends
                    while True:
                        await guest.wait_disconnect(guest.disconnects)
                assert guest.closed_reason is not None and "closed" in guest.closed_reason, guest.closed_reason

            # the gateway stays up, thin-01 is gone, thin-02's route still works
            await until(lambda: online(lab) == {"thin-02"})
            assert lab.gateway_stopped is not None and not lab.gateway_stopped.is_set()
            await until(lambda: lab.gateway.snapshot()["routes"][0]["state"] == "idle")
            await probe_ok(lab, "two")
            assert second.sessions == 1 and second.online

            # thin-01 again: its device is available on its route again
            _again, again_scope = await start_client(nursery, lab.client_config)
            await until(lambda: "thin-01" in online(lab))
            await probe_ok(lab, "one")
            await probe_ok(lab, "two")
            again_scope.cancel()
            second_scope.cancel()
