"""`Gateway.reload`: routes added, removed and changed while another route's channel keeps moving data.

In-process lab (real mutual TLS, real sockets, the emulated keyboard and
loopback device).  A guest on route `keep` reads the keyboard's device
descriptor over and over through the gateway while the config is
reloaded three times; not one transfer may fail, and it stays the same
channel.  A guest on route `change` loses its session when its route
changes (and only then), and comes back on the changed route.
"""

from __future__ import annotations

import pytest
import trio

from redirgate.cli.lab import LabRoute, write_gateway_config
from redirgate.gateway.config import load_config
from redirgate.gateway.errors import ListenError
from redirgate.gateway.preflight import preflight
from redirgate.vmside.guest import GuestError, UsbredirGuest
from redirgate.vmside.probe import probe
from tests.support.tunnel_lab import Lab, running_lab

KEEP = LabRoute("keep", "usb:1209:0002")
CHANGE = LabRoute("change", "usb:1209:0003")
GONE = LabRoute("gone", "usb:1209:0003")
NEW = LabRoute("new", "usb:1209:0003")


async def reload(lab: Lab, *routes: LabRoute) -> list[str]:
    config = load_config(write_gateway_config(lab.directory, routes))
    assert preflight(config, held=lab.gateway.held_endpoints()) == []
    return await lab.gateway.reload(config)


async def port_closed(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


@pytest.mark.trio_timeout(300)  # a safety net: the lab and two probes take long on a loaded machine
async def test_routes_added_removed_and_changed_while_another_channel_moves_data(tmp_path: trio.Path) -> None:
    async with running_lab(tmp_path, [KEEP, CHANGE, GONE], virtual=["virtual:keyboard", "virtual:loopback"]) as lab:
        gateway = lab.gateway
        gone_port = lab.route_port("gone")
        transfers = 0
        failures: list[str] = []
        tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("keep"))
        async with tcp, UsbredirGuest(tcp, peer="vm keep") as guest, trio.open_nursery() as nursery:
            await guest.wait_device()

            async def keep_moving() -> None:
                nonlocal transfers
                while True:
                    status, data = await guest.control(0x80, 6, 0x100, 0, 18)
                    if status != 0 or len(data) != 18:
                        failures.append(f"status {status}, {len(data)} bytes")
                    transfers += 1
                    moved.unpark_all()
                    await trio.lowlevel.checkpoint()

            moved = trio.lowlevel.ParkingLot()  # the mover wakes whoever waits after every transfer

            async def moved_since(count: int) -> None:
                while transfers < count + 20:
                    await moved.park()

            nursery.start_soon(keep_moving)
            await moved_since(0)
            keep_channel = gateway.snapshot()["routes"][0]["channel"]["id"]

            # a guest on `change`, attached
            change_tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("change"))
            async with change_tcp, UsbredirGuest(change_tcp, peer="vm change") as changed_guest:
                await changed_guest.wait_device()

                # 1: `gone` removed: its port closes, nothing else moves
                count = transfers
                assert await reload(lab, KEEP, CHANGE) == ["route gone removed"]
                assert await port_closed(gone_port)
                await moved_since(count)
                assert changed_guest.closed_reason is None  # `change` did not change

                # 2: `change` changed (its allow list): its session ends, `keep`'s does not
                count = transfers
                changed = LabRoute("change", "usb:1209:0003", allow=["127.0.0.0/8", "10.0.0.0/8"])
                assert await reload(lab, KEEP, changed) == ["route change changed"]
                with pytest.raises(GuestError):  # the runner's safety net ends a wait that never ends
                    while True:
                        await changed_guest.wait_disconnect(changed_guest.disconnects)
                await moved_since(count)

            # 3: `new` added (on the device `change` serves when idle); `change` comes back
            count = transfers
            assert await reload(lab, KEEP, changed, NEW) == ["route new added"]
            result = await probe("127.0.0.1", lab.route_port("new"), timeout_s=120)
            assert (result.vendor_id, result.product_id) == (0x1209, 0x0003)
            result = await probe("127.0.0.1", lab.route_port("change"), timeout_s=120)
            assert result.product_id == 0x0003
            await moved_since(count)

            # a port that cannot be had refuses the whole reload; nothing changes
            with trio.socket.socket() as squatter:
                await squatter.bind(("127.0.0.1", 0))
                squatter.listen(1)
                taken = LabRoute("taken", "usb:1209:0003", listen=f"127.0.0.1:{squatter.getsockname()[1]}")
                config = load_config(write_gateway_config(lab.directory, [KEEP, taken]))
                with pytest.raises(ListenError, match=r"route taken: cannot listen on 127\.0\.0\.1:"):
                    await gateway.reload(config)
            assert [r["name"] for r in gateway.snapshot()["routes"]] == ["keep", "change", "new"]

            await moved_since(transfers)
            keep = gateway.snapshot()["routes"][0]
            assert keep["state"] == "active" and keep["channel"]["id"] == keep_channel
            assert keep["channels_served"] == 1
            assert failures == [] and guest.closed_reason is None
            nursery.cancel_scope.cancel()
