"""Per-client bounds: a certified client cannot take the gateway's memory, its log or its status.

The flood test runs `redirgate gateway run` and `redirgate client run` as
real processes on loopback (the gateway's RSS is read from /proc); the
hostile client is a real certified TLS client in the test
(`tests.support.hostile`).  The status test registers many sessions in an
in-process gateway and reads its real admin socket.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from redirgate.cli.lab import GATEWAY_NAME, LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.gateway import pki
from redirgate.gateway.admin import STATUS_MAX_ENTRIES, read_status
from redirgate.gateway.registry import ClientSession
from redirgate.proto import tunnel as t
from redirgate.transport import client_context
from redirgate.vmside.probe import probe
from tests.support.gateway_procs import running_client, running_gateway
from tests.support.hostile import HostileClient, usb_entries
from tests.support.tunnel_lab import running_lab
from tests.support.waiting import until_async

KBD = LabRoute("kbd", "usb:1209:0002")
#: the flood: updates of 1,024 new devices each (the protocol's most per message)
FLOOD_UPDATES = 100
#: then a storm of small hotplug updates, well past inventory_updates_per_s
STORM_UPDATES = 300
DEVICES_PER_UPDATE = 1024
#: what the gateway may grow by under the flood; unbounded it grows by ~130 MB here
RSS_GROWTH_LIMIT_KIB = 40 * 1024


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


async def status(admin: Path) -> dict[str, object]:
    return await trio.to_thread.run_sync(read_status, admin)


async def wait_status(admin: Path, check: Callable[[dict[str, object]], object]) -> dict[str, object]:
    """The gateway process's status once `check` holds for it: another process's
    state, asked again every 0.1 s (each ask costs the flooded gateway a reply);
    the runner's safety net ends a wait that never ends."""
    found: list[dict[str, object]] = []

    async def holds() -> bool:
        try:
            doc = await status(admin)
        except OSError:  # not listening yet, or too busy to answer within read_status's timeout
            return False
        if check(doc):
            found.append(doc)
        return bool(found)

    await until_async(holds, "the gateway's status", poll_s=0.1)
    return found[0]


def client_entry(doc: dict[str, object], name: str) -> dict[str, object] | None:
    clients = doc["clients"]
    assert isinstance(clients, list)
    return next((c for c in clients if c["identity"] == name), None)


# The flood costs CPU on both ends (the test encodes ~25 MB of inventory, the
# gateway decodes it), so the test's length follows the machine's load: 6 s
# quiet, 11-24 s beside two CPU hogs, 66 s with twenty hogs on its core (load
# 20) - past the default 120 s safety net at load 25.  Nothing in it is timed.
@pytest.mark.trio_timeout(900)
async def test_a_flooding_client_keeps_the_gateway_bounded_and_its_neighbour_working(tmp_path: Path) -> None:
    make_pki(tmp_path)
    pki.issue_client(tmp_path / "pki", "thin-02")
    # the gateway's own patience (handshakes, heartbeats) is no part of this test: a loaded machine may not try it
    config = write_gateway_config(
        tmp_path, [KBD], limit_log_interval_s=600, handshake_timeout_s=120.0, heartbeat_timeout_s=600.0
    )
    with running_gateway(config, tmp_path / "gateway.log") as gw:
        admin = tmp_path / "gateway.sock"
        client_config = write_client_config(tmp_path, gw.tunnel_port, virtual=["virtual:keyboard"])
        with running_client(client_config, tmp_path / "client.log"):
            await wait_status(admin, lambda doc: client_entry(doc, "thin-01") is not None)
            cdir = pki.client_dir(tmp_path / "pki", "thin-02")
            context = client_context(
                cdir / "client-cert.pem", cdir / "client-key.pem", tmp_path / "pki" / "ca-cert.pem", GATEWAY_NAME
            )
            hostile = HostileClient(gw.tunnel_port, context)
            try:
                await hostile.connect()
                await wait_status(admin, lambda doc: client_entry(doc, "thin-02") is not None)
                before = rss_kib(gw.process.pid)
                probes: list[object] = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(hostile.answer_heartbeats)
                    flooding, probed = trio.Event(), trio.Event()

                    async def neighbour() -> None:
                        await flooding.wait()
                        probes.append(await probe("127.0.0.1", gw.routes["kbd"], timeout_s=600))
                        probed.set()

                    nursery.start_soon(neighbour)
                    for n in range(FLOOD_UPDATES):
                        added = usb_entries(n * DEVICES_PER_UPDATE, DEVICES_PER_UPDATE, description="d" * 200)
                        await hostile.send(t.InventoryUpdate(added=added))
                        flooding.set()
                    toggled = usb_entries(0, 1)
                    for n in range(STORM_UPDATES):
                        plug = (
                            t.InventoryUpdate(added=toggled) if n % 2 else t.InventoryUpdate(removed=(toggled[0].id,))
                        )
                        await hostile.send(plug)
                    # the last word: one device, everything else removed; it must be what the gateway ends with
                    last = usb_entries(10**7, 1)
                    await hostile.send(t.Inventory(last))
                    doc = await wait_status(
                        admin,
                        lambda doc: [d["id"] for d in client_entry(doc, "thin-02")["devices"]] == [last[0].id],  # type: ignore[index]
                    )
                    peak = rss_kib(gw.process.pid, "VmHWM")
                    await probed.wait()
                    nursery.cancel_scope.cancel()
            finally:
                await hostile.aclose()
            # the neighbour's channel worked during the flood, and works after it
            assert probes and getattr(probes[0], "vendor_id", None) == 0x1209
            after_probe = await probe("127.0.0.1", gw.routes["kbd"], timeout_s=600)
            assert (after_probe.vendor_id, after_probe.product_id) == (0x1209, 0x0002)
            growth = peak - before
            assert growth < RSS_GROWTH_LIMIT_KIB, f"gateway RSS grew by {growth} KiB under the flood"
            counters = doc["counters"]
            assert isinstance(counters, dict)
            assert counters["devices_refused"] == FLOOD_UPDATES * DEVICES_PER_UPDATE - 256, counters
            assert counters.get("inventory_updates_coalesced", 0) > 0, counters
            log = gw.log()
            refused_lines = [line for line in log.splitlines() if "device(s) refused" in line]
            assert len(refused_lines) == 1, refused_lines  # once per limit_log_interval_s, not once per update
            longest = max(len(line) for line in log.splitlines())
            assert longest < 2000, f"a {longest}-character log line"
            assert "Traceback" not in log
            print(f"gateway RSS {before} KiB before, peak {peak} KiB ({growth:+d} KiB) under {FLOOD_UPDATES} floods")


def test_config_bounds(tmp_path: Path) -> None:
    from redirgate.gateway.config import ConfigErrors, load_config

    make_pki(tmp_path)
    config = load_config(write_gateway_config(tmp_path, [KBD], max_devices_per_client=4, inventory_updates_per_s=2.5))
    assert config.client_limits.max_devices == 4 and config.client_limits.updates_per_s == 2.5
    assert config.client_limits.max_ports == 32 and config.handshake_limits.max_handshakes == 256
    try:
        load_config(write_gateway_config(tmp_path, [KBD], max_devices_per_client=0.5))
    except ConfigErrors as exc:
        assert re.search(r"max_devices_per_client: must be a number >= 1", str(exc)), str(exc)
    else:
        raise AssertionError("max_devices_per_client = 0.5 was accepted")


async def test_status_on_the_admin_socket_is_bounded(tmp_path: Path) -> None:
    async with running_lab(tmp_path, [KBD], virtual=["virtual:keyboard"]) as lab:
        registry = lab.gateway.registry

        async def no_send(message: t.TunnelMessage) -> None:
            return None

        extra = STATUS_MAX_ENTRIES + 200
        for n in range(extra):
            registry.add(ClientSession(f"many-{n}", f"127.0.0.1:{n}", no_send))
        assert lab.addresses.admin is not None
        doc = await status(lab.addresses.admin)
        assert len(doc["clients"]) == STATUS_MAX_ENTRIES  # type: ignore[arg-type]
        assert doc["clients_more"] == extra + 1 - STATUS_MAX_ENTRIES
