"""The admin socket: status with channel age and refusals, `disconnect ROUTE|CLIENT`."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from redirgate.cli.gateway_commands import format_status
from redirgate.cli.lab import LabRoute
from redirgate.gateway.admin import read_status, request
from redirgate.vmside.guest import GuestError, UsbredirGuest
from tests.support.tunnel_lab import running_lab
from tests.support.waiting import until

KBD = LabRoute("kbd", "usb:1209:0002")
FAR = LabRoute("far", "usb:1209:0002", allow=["10.0.0.0/8"])


@pytest.mark.trio_timeout(60)
async def test_status_and_disconnect_through_the_admin_socket(tmp_path: Path) -> None:
    async with running_lab(tmp_path, [KBD, FAR], virtual=["virtual:keyboard"]) as lab:
        socket_path = lab.addresses.admin
        assert socket_path is not None
        refused = await trio.open_tcp_stream("127.0.0.1", lab.route_port("far"))
        await refused.aclose()
        tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("kbd"))
        async with tcp, UsbredirGuest(tcp, peer="vm") as guest:
            await guest.wait_device()
            await until(lambda: lab.gateway.snapshot()["routes"][1]["refusals"] == 1, "far's refusal counted")
            status = await trio.to_thread.run_sync(read_status, socket_path)
            text = format_status(status)
            assert "1 refusal(s)" in text and "far: " in text and ", 1 refused" in text
            assert "refused 127.0.0.1:" in text and "not allowed by 10.0.0.0/8" in text
            assert "channel 1 with 127.0.0.1:" in text and " for 0 s: " in text
            assert "B to the hypervisor; resumable" in text  # the lab's client and gateway both speak resume

            # a route: its channel ends, the VM sees the connection go
            reply = await trio.to_thread.run_sync(request, socket_path, {"command": "disconnect", "target": "kbd"})
            assert reply == {"ok": True, "done": "route kbd: channel 1 ended"}
            with pytest.raises(GuestError):  # the runner's safety net ends a wait that never ends
                while True:
                    await guest.wait_disconnect(guest.disconnects)

        # a client: its session ends, and it dials back by itself
        client = lab.client
        assert client is not None and client.sessions == 1
        reply = await trio.to_thread.run_sync(request, socket_path, {"command": "disconnect", "target": "thin-01"})
        assert reply["ok"] and reply["done"].startswith("client thin-01: session from 127.0.0.1:")
        await until(lambda: client.sessions == 2 and client.online, "the client dialled back")

        for target, error in (
            ("nobody", "no route or client online named 'nobody'"),
            ("kbd", "route kbd has no channel now (idle)"),
        ):
            reply = await trio.to_thread.run_sync(request, socket_path, {"command": "disconnect", "target": target})
            assert reply["ok"] is False and error in reply["error"]
        reply = await trio.to_thread.run_sync(request, socket_path, {"command": "reboot"})
        assert reply["ok"] is False and "unknown command" in reply["error"]


@pytest.mark.trio_timeout(60)
async def test_a_certificate_expiring_within_30_days_is_logged_and_exported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import trio.testing

    from redirgate.cli.lab import GATEWAY_NAME, make_pki, write_gateway_config
    from redirgate.gateway import pki
    from redirgate.gateway.config import load_config
    from redirgate.gateway.service import Gateway

    base = make_pki(tmp_path)
    pki.issue_gateway(base, GATEWAY_NAME, ips=["127.0.0.1"], valid_days=10, force=True)
    gateway = Gateway(load_config(write_gateway_config(tmp_path, [KBD])))
    caplog.set_level(logging.WARNING)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway._watch_expiry)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    warned = [r.getMessage() for r in caplog.records if "expires in" in r.getMessage()]
    assert len(warned) == 1 and "server-cert.pem expires in 10 day(s)" in warned[0], warned
    seconds = dict(gateway._metrics_state()["expiry"])
    assert 9 * 86400 < seconds[str(pki.gateway_dir(base, GATEWAY_NAME) / "server-cert.pem")] <= 10 * 86400
