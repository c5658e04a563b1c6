"""serve-usb's wait for a device that is not there: said once, then the
device served the moment it appears (an emulated device plugged in late)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from redirgate.client.usb.selector import parse_selector
from redirgate.client.usb.serve import serve_listen, watch_presence
from redirgate.client.usb.source import SelectorSource
from redirgate.client.virtual import KeyboardDevice, VirtualBackend
from redirgate.vmside.probe import ProbeResult, probe
from tests.support.waiting import until


async def test_an_absent_device_is_said_then_served_when_it_appears(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="redirgate.client.usb.serve")
    backend = VirtualBackend()
    source = SelectorSource(parse_selector("1209:0002"), backend=backend, poll_interval_s=0.01, boot_ports=dict)
    said: list[str] = []
    changed = trio.Event()

    def report(line: str) -> None:
        said.append(line)
        changed.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: watch_presence(source, report, interval_s=0.01))
            listeners = await nursery.start(serve_listen, "127.0.0.1", 0, source)
            port = listeners[0].socket.getsockname()[1]
            await changed.wait()
            assert said == ["1209:0002: no such USB device is plugged in; waiting for it"]
            changed = trio.Event()
            result: list[ProbeResult] = []

            async def probe_it() -> None:
                result.append(await probe("127.0.0.1", port, timeout_s=30))

            async with trio.open_nursery() as probing:
                probing.start_soon(probe_it)  # a VM waiting before the device is there
                await until(
                    lambda: any("usbredir guest connected" in r.getMessage() for r in caplog.records),
                    "the probe's connection taken, its engine waiting for the device",
                )
                backend.plug(KeyboardDevice())
            assert result[0].product == "Virtual Keyboard"
            await changed.wait()
            assert said[1] == "1209:0002: 1209:0002 redirgate Virtual Keyboard at 254-1 is plugged in"
            assert len(said) == 2  # one line per change, not per look
            nursery.cancel_scope.cancel()
    finally:
        backend.close()


async def test_presence_is_not_looked_for_while_a_session_holds_the_device() -> None:
    """While an engine holds the device, `watch_presence` waits for its release instead of looking
    (each look opened the device a second time); after the release it looks and reports again."""
    backend = VirtualBackend()
    backend.plug(KeyboardDevice())
    source = SelectorSource(parse_selector("1209:0002"), backend=backend, poll_interval_s=0.01, boot_ports=dict)
    said: list[str] = []
    reported = trio.Event()

    def report(line: str) -> None:
        said.append(line)
        reported.set()

    try:
        device = await source.acquire()
        assert source.held == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: watch_presence(source, report, interval_s=0.01))
            await trio.testing.wait_all_tasks_blocked()
            # parked on the release, not looking in a worker thread
            assert source._unheld.statistics().tasks_waiting == 1
            assert said == []
            await device.release()
            assert source.held == 0
            with trio.fail_after(30):  # safety net only
                await reported.wait()
            assert said == ["1209:0002: 1209:0002 redirgate Virtual Keyboard at 254-1 is plugged in"]
            nursery.cancel_scope.cancel()
    finally:
        backend.close()
