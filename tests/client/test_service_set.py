"""`ServiceSet`: one port's defect does not end the others, and the broken one comes back."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from redirgate.client.service_set import RESTART_FIRST_S, ServiceSet


@dataclass(frozen=True)
class Export:
    name: str


class Service:
    def __init__(self, export: Export, runs: dict[str, int]) -> None:
        self.export, self.runs = export, runs

    async def run(self) -> None:
        self.runs[self.export.name] = self.runs.get(self.export.name, 0) + 1
        if self.export.name == "flaky" and self.runs["flaky"] == 1:
            raise TypeError("int() can't convert non-string with explicit base")
        await trio.sleep_forever()


async def test_a_service_that_fails_unexpectedly_restarts_alone(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    runs: dict[str, int] = {}
    ports = ServiceSet([Export("steady"), Export("flaky")], lambda e: Service(e, runs), Service.run)
    with trio.move_on_after(RESTART_FIRST_S * 5), caplog.at_level(logging.ERROR):
        await ports.run()
    assert runs == {"steady": 1, "flaky": 2}
    [record] = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert "port flaky" in record.getMessage() and record.exc_info is not None


async def test_a_removed_service_is_not_restarted(autojump_clock: trio.testing.MockClock) -> None:
    runs: dict[str, int] = {}
    ports = ServiceSet([Export("flaky")], lambda e: Service(e, runs), Service.run)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ports.run)
        await trio.testing.wait_all_tasks_blocked()
        assert [str(change) for change in ports.reload([])] == ["flaky removed"]
        await trio.sleep(RESTART_FIRST_S * 5)
        nursery.cancel_scope.cancel()
    assert runs == {"flaky": 1}
