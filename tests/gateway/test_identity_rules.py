"""Attach tokens, revoked and duplicate identities, a second gateway on one admin socket.

In-process lab (`tests.support.tunnel_lab`: a Gateway and a real client
"thin-01" exporting an emulated keyboard) with hostile certified clients
(`tests.support.hostile`) on real TLS; the admin socket test runs `redirgate
gateway run` twice as real processes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from redirgate.cli.lab import GATEWAY_NAME, LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.client.config import load_client_config
from redirgate.client.service import ClientService
from redirgate.gateway import pki
from redirgate.gateway.admin import read_status
from redirgate.proto import tunnel as t
from redirgate.proto.usbredir import Role, UsbredirConnection
from redirgate.transport import ClientContext, client_context
from tests.support.gateway_procs import running_gateway
from tests.support.hostile import HostileClient, usb_entries
from tests.support.services import redirgate
from tests.support.tunnel_lab import Lab, running_lab
from tests.support.waiting import until

TUNNEL_LOG = "redirgate.gateway.tunnel_server"
KBD = LabRoute("kbd", "usb:1209:0002")
EVIL = LabRoute("evil", "usb:1209:0001", client="thin-02")


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


def warnings(caplog: pytest.LogCaptureFixture, logger: str = TUNNEL_LOG) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]


def context_for(lab: Lab, name: str) -> ClientContext:
    cdir = pki.client_dir(lab.directory / "pki", name)
    return client_context(
        cdir / "client-cert.pem", cdir / "client-key.pem", lab.directory / "pki" / "ca-cert.pem", GATEWAY_NAME
    )


def hostile(lab: Lab, name: str) -> HostileClient:
    if not pki.client_dir(lab.directory / "pki", name).exists():
        pki.issue_client(lab.directory / "pki", name)
    return HostileClient(lab.tunnel_port, context_for(lab, name))


async def test_a_replayed_attach_token_is_refused_before_anything_is_answered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_lab(tmp_path, [KBD, EVIL], virtual=["virtual:keyboard"]) as lab:
        fake = hostile(lab, "thin-02")
        await fake.connect(inventory=usb_entries(1, 1))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake.answer_heartbeats)
            guest = await trio.open_tcp_stream("127.0.0.1", lab.route_port("evil"))
            async with guest:
                await guest.send_all(UsbredirConnection(Role.GUEST).hello_bytes())
                request = await fake.opens.receive()
                await fake.send(t.ChannelOpened(request.channel_id))
                first, result = await fake.attach(request.channel_id, request.token)
                assert result.ok, result
                replay, again = await fake.attach(request.channel_id, request.token)
                assert not again.ok and "already used" in again.reason, again
                await replay.aclose()
                await first.aclose()
            nursery.cancel_scope.cancel()
        await fake.aclose()
        lines = [line for line in warnings(caplog) if "refused data connection" in line]
        assert len(lines) == 1 and "attach token of channel" in lines[0] and "already used" in lines[0], lines
        assert lab.gateway.snapshot()["counters"]["attach_refused_replayed"] == 1
        # metered under its real reason, not as a bare "attach"
        registry = lab.gateway.events.registry
        assert registry.get_sample_value("redirgate_refusals_total", {"reason": "attach_replayed"}) == 1
        assert registry.get_sample_value("redirgate_bounded_total", {"counter": "attach_refused_replayed"}) == 1


async def test_a_revoked_client_is_told_so_and_logs_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with running_lab(
        tmp_path, [KBD], virtual=["virtual:keyboard"], heartbeat_interval_s=0.2, heartbeat_timeout_s=5.0
    ) as lab:
        # revoked while online: told before its session ends
        live = hostile(lab, "thin-02")
        await live.connect()
        pki.revoke(lab.directory / "pki", "thin-02")
        await live.answer_heartbeats()  # until the gateway closes
        await live.aclose()
        assert live.error is not None and live.error.code == "unauthorized", live.error
        assert "certificate revoked" in live.error.message
        # revoked at connect: the real client says why it is refused
        config = write_client_config(lab.directory, lab.tunnel_port, name="thin-02")
        service = ClientService(load_client_config(config))
        assert lab.nursery is not None
        scope, stopped = trio.CancelScope(), trio.Event()

        async def run_client() -> None:
            try:
                with scope:
                    await service.run()
            finally:
                stopped.set()

        lab.nursery.start_soon(run_client)

        def client_said_revoked() -> bool:
            return any(
                r.name == "redirgate.client.tunnel" and "certificate revoked" in r.getMessage() for r in caplog.records
            )

        await until(client_said_revoked, "the client logs that its certificate was revoked")
        scope.cancel()  # the revoked client stops here, not with the lab (its redials raced the teardown)
        await stopped.wait()
        assert lab.client is not None and lab.client.online and lab.client.sessions == 1


async def test_two_clients_with_one_certificate_the_live_one_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_lab(tmp_path, [KBD], virtual=["virtual:keyboard"]) as lab:
        legit = {c["identity"]: c["peer"] for c in lab.gateway.snapshot()["clients"]}["thin-01"]
        for _ in range(3):  # a clone with thin-01's certificate dials again and again
            clone = hostile(lab, "thin-01")
            answer = await clone.hello()
            await clone.aclose()
            assert isinstance(answer, t.Error) and answer.code == "duplicate_identity", answer
            assert legit in answer.message
        lines = [line for line in warnings(caplog) if "two clients with one certificate" in line]
        assert len(lines) == 1 and legit in lines[0], lines  # once per interval, with both addresses
        assert lab.gateway.snapshot()["counters"]["duplicate_identity_refused"] == 3
        refused = lab.gateway.events.registry.get_sample_value(
            "redirgate_refusals_total", {"reason": "duplicate_identity"}
        )
        assert refused == 3
        assert lab.client is not None and lab.client.online and lab.client.sessions == 1


async def test_a_second_gateway_does_not_take_a_live_admin_socket(tmp_path: Path) -> None:
    make_pki(tmp_path)
    config = write_gateway_config(tmp_path, [KBD])
    with running_gateway(config, tmp_path / "gateway.log"):
        second = await trio.to_thread.run_sync(lambda: redirgate("gateway", "run", "--config", str(config)))
        assert second.returncode == 1, second
        assert "another gateway is running on this admin socket" in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1, second.stderr
        status = await trio.to_thread.run_sync(read_status, tmp_path / "gateway.sock")  # the first still answers
        assert "clients" in status
