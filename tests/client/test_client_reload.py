"""`ClientService.reload`: the export policy and ports change, unchanged ports are not touched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from redirgate.cli.lab import make_pki, write_client_config
from redirgate.client.config import load_client_config
from redirgate.client.service import ClientService


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
