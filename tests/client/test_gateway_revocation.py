"""Revocation both ways: a thin client refuses a gateway whose certificate the CA revoked.

In-process lab (`tests.support.tunnel_lab`: a Gateway and the real client
"thin-01") on real TLS over loopback.  The gateway hands its clients the
CA's CRL after its hello and whenever crl.pem changes; the client keeps the
newest CRL its CA signed (from the gateway or its own `crl` file) and checks
the gateway's certificate against it at every dial.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import trio

from redirgate.cli.lab import GATEWAY_NAME, LabRoute, write_client_config
from redirgate.client.config import load_client_config
from redirgate.client.service import ClientService
from redirgate.gateway import pki
from tests.support.tunnel_lab import running_lab
from tests.support.waiting import until

CLIENT_LOG = "redirgate.client.tunnel"
KBD = LabRoute("kbd", "usb:1209:0002")


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == CLIENT_LOG and r.levelno == logging.ERROR and "refusing the gateway" in r.getMessage()
    ]


async def test_a_live_session_ends_when_the_gateway_is_revoked_and_no_dial_succeeds_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_lab(
        tmp_path, [KBD], virtual=["virtual:keyboard"], heartbeat_interval_s=0.2, heartbeat_timeout_s=5.0
    ) as lab:
        client = lab.client
        assert client is not None and client.online
        # the gateway hands its CRL right after its hello
        await until(lambda: client.revocations.current is not None, "the client holds the gateway's CRL")
        assert client.revocations.current is not None
        held = client.revocations.current.number
        entry = pki.revoke(lab.directory / "pki", GATEWAY_NAME, kind=pki.CertKind.GATEWAY)
        # the gateway sees crl.pem change at its next heartbeat and hands it on; the client ends the session
        await until(lambda: len(refusals(caplog)) >= 2, "the live session ended and the next dial was refused")
        lines = refusals(caplog)
        assert all(f"serial {entry.serial:x}" in line and "revoked by CRL" in line for line in lines), lines
        assert f"from the gateway 127.0.0.1:{lab.tunnel_port}" in lines[0], lines
        assert client.revocations.current is not None and client.revocations.current.number > held
        assert not client.online and client.sessions == 1


async def test_a_client_with_a_local_crl_refuses_a_revoked_gateway_at_its_first_dial(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_lab(tmp_path, [KBD], virtual=["virtual:keyboard"]) as lab:
        # the admin revoked the gateway on the CA machine; this gateway still has the old crl.pem
        ca_machine = tmp_path / "ca-machine"
        shutil.copytree(lab.directory / "pki", ca_machine)
        pki.revoke(ca_machine, GATEWAY_NAME, kind=pki.CertKind.GATEWAY)
        local = tmp_path / "client-crl.pem"
        shutil.copy(ca_machine / "crl.pem", local)
        pki.issue_client(lab.directory / "pki", "thin-02")
        service = ClientService(
            load_client_config(write_client_config(lab.directory, lab.tunnel_port, name="thin-02", crl=local))
        )
        assert lab.nursery is not None
        with trio.CancelScope() as scope:
            lab.nursery.start_soon(service.run)
            await until(lambda: len(refusals(caplog)) >= 2, "the client refused the gateway twice")
            scope.cancel()
        assert service.client.sessions == 0 and "thin-02" not in lab.gateway.registry.clients
        assert f"from {local}" in refusals(caplog)[0]
