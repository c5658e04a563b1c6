"""`ClientService.reload`: the export policy and ports change, unchanged ports are not touched."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from redirgate.cli.lab import LabRoute, make_pki, write_client_config
from redirgate.client.config import load_client_config
from redirgate.client.service import ClientService
from tests.support.tunnel_lab import running_lab
from tests.support.waiting import until


def printers(tmp_path: Path, *specs: tuple[str, int]) -> str:
    tables = []
    for name, ring in specs:
        fifo = tmp_path / f"{name}.fifo"
        if not fifo.exists():
            os.mkfifo(fifo)
        tables.append(f'\n[[parallel]]\nname = "{name}"\nport = "{fifo}"\nring_bytes = {ring}')
    return "".join(tables)


@pytest.mark.trio_timeout(30)
async def test_reload_changes_only_the_ports_that_changed(tmp_path: Path) -> None:
    make_pki(tmp_path)
    first = write_client_config(
        tmp_path, 1, extra_export=printers(tmp_path, ("keep", 65536), ("change", 65536), ("gone", 65536))
    )
    service = ClientService(load_client_config(first))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)  # dials 127.0.0.1:1 and keeps retrying: no gateway needed here
        await trio.testing.wait_all_tasks_blocked()
        ports = service.ports.parallel
        assert ports is not None
        kept, changed = ports.services["keep"], ports.services["change"]
        scopes = dict(ports.ports._scopes)

        second = write_client_config(
            tmp_path,
            1,
            usb_ids=["0781:5567"],
            extra_export=printers(tmp_path, ("keep", 65536), ("change", 131072), ("new", 65536)),
        )
        changes = service.reload(load_client_config(second))
        assert changes == ["export policy", "parallel:change changed", "parallel:gone removed", "parallel:new added"]
        await trio.testing.wait_all_tasks_blocked()
        assert ports.services["keep"] is kept and not scopes["keep"].cancel_called
        assert ports.services["change"] is not changed and scopes["change"].cancel_called
        assert scopes["gone"].cancel_called and "gone" not in ports.services
        assert sorted(e.id for e in service.ports.entries()) == ["parallel:change", "parallel:keep", "parallel:new"]
        assert [s.product_id for s in service.client.inventory.policy.usb_ids] == [0x5567]
        # what did not change, did not move
        assert service.reload(load_client_config(second)) == []
        nursery.cancel_scope.cancel()


@pytest.mark.trio_timeout(120)
async def test_reload_ends_the_channel_of_a_port_it_removes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A VM printing to a port the admin takes out of the config loses the channel, and the gateway hears why."""
    caplog.set_level(logging.INFO, logger="redirgate")
    export = printers(tmp_path, ("printer", 65536), ("other", 65536))
    async with running_lab(
        tmp_path, [LabRoute("printer", "parallel:printer")], client_extra_export=export, start_client_now=False
    ) as lab:
        assert lab.nursery is not None
        service = ClientService(load_client_config(lab.client_config))
        lab.nursery.start_soon(service.run)
        await service.client.connected.wait()
        with trio.socket.socket() as hypervisor:
            await hypervisor.connect(("127.0.0.1", lab.route_port("printer")))
            await until(lambda: "serving parallel:printer to the gateway" in caplog.text, "the printer's channel")
            second = write_client_config(tmp_path, lab.tunnel_port, extra_export=printers(tmp_path, ("other", 65536)))
            assert "parallel:printer removed" in service.reload(load_client_config(second))
            await until(lambda: not service.client.channels, "the channel to end")
            # the gateway names the client's reason where the route's channel ends
            await until(lambda: "closed by the client: its export was removed" in caplog.text, "the gateway's line")
