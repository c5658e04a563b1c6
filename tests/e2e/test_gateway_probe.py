"""Gateway + client over real mutual TLS on loopback, checked with `probe` (no VM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from redirgate.cli.lab import LabRoute
from redirgate.proto.usbredir import Role, UsbredirConnection
from redirgate.vmside.probe import probe
from tests.support.tunnel_lab import running_lab, start_client
from tests.support.waiting import until


def make_image(path: Path) -> str:
    with path.open("wb") as f:
        f.truncate(4 * 1024 * 1024)
    return f"virtual:storage:{path}"


async def test_probe_through_gateway_finds_stick_and_keyboard(tmp_path: Path) -> None:
    routes = [LabRoute("stick", "usb:1209:0001"), LabRoute("kbd", "usb:1209:0002")]
    virtual = [make_image(tmp_path / "stick.img"), "virtual:keyboard"]
    async with running_lab(tmp_path, routes, virtual=virtual) as lab:
        stick = await probe("127.0.0.1", lab.route_port("stick"))
        assert (stick.vendor_id, stick.product_id) == (0x1209, 0x0001)
        kbd = await probe("127.0.0.1", lab.route_port("kbd"))
        assert (kbd.vendor_id, kbd.product_id) == (0x1209, 0x0002)
        # the route is offered again after the first hypervisor left
        again = await probe("127.0.0.1", lab.route_port("stick"))
        assert again.product_id == 0x0001
        routes_state = {r["name"]: r for r in lab.gateway.snapshot()["routes"]}
        assert routes_state["stick"]["channels_served"] == 2


async def test_hypervisor_held_until_client_comes(tmp_path: Path) -> None:
    routes = [LabRoute("stick", "usb:1209:0001")]
    virtual = [make_image(tmp_path / "stick.img")]
    async with running_lab(tmp_path, routes, virtual=virtual, start_client_now=False) as lab:
        async with trio.open_nursery() as nursery:
            result: list[Any] = []
            probed = trio.Event()

            async def vm() -> None:
                result.append(await probe("127.0.0.1", lab.route_port("stick"), timeout_s=60))
                probed.set()

            nursery.start_soon(vm)
            await until(lambda: lab.gateway.snapshot()["routes"][0]["state"] == "held", "the hypervisor to be held")
            assert "offline" in lab.gateway.snapshot()["routes"][0]["waiting_for"]
            async with trio.open_nursery() as clients:
                _, scope = await start_client(clients, lab.client_config)
                await probed.wait()
                scope.cancel()
        assert result[0].product_id == 0x0001


async def test_held_raw_route_keeps_reading_and_counts_discards(tmp_path: Path, caplog: Any) -> None:
    import logging

    caplog.set_level(logging.INFO)
    routes = [LabRoute("console", "serial:console")]
    async with running_lab(tmp_path, routes, start_client_now=False) as lab:
        stream = await trio.open_tcp_stream("127.0.0.1", lab.route_port("console"))
        async with stream:
            chunk = b"x" * 16384
            for _ in range(64):  # the gateway never stops reading a held VM's serial port
                await stream.send_all(chunk)
            await until(
                lambda: lab.gateway.snapshot()["routes"][0]["discarded_bytes"] >= 64 * 16384 - 64 * 1024, "discards"
            )
        warnings = [r for r in caplog.records if "while no device was attached" in r.getMessage()]
        assert 1 <= len(warnings) <= 12, [r.getMessage() for r in warnings]


async def test_hold_timeout_closes_a_hypervisor_whose_device_never_comes(tmp_path: Path, caplog: Any) -> None:
    import logging

    caplog.set_level(logging.INFO)
    async with running_lab(
        tmp_path, [LabRoute("stick", "usb:1209:0001")], start_client_now=False, hold_timeout_s=1.0
    ) as lab:
        stream = await trio.open_tcp_stream("127.0.0.1", lab.route_port("stick"))
        async with stream:
            # a VM's usb-redir says hello first; the route holds it only after that
            await stream.send_all(UsbredirConnection(Role.GUEST).hello_bytes())
            assert await stream.receive_some(100) == b""  # closed by the gateway
        assert "no device within hold_timeout_s = 1" in caplog.text and "offline" in caplog.text
        await until(lambda: lab.gateway.snapshot()["routes"][0]["state"] == "idle", "the route to be idle")
