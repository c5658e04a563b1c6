"""Suite-wide hooks: the one trio runner, and the no-skip rule.

The trio runner (tests/support/trio_runner.py) runs every ``async def test_...``
under trio with a wall-clock safety net (``@pytest.mark.trio_timeout(seconds)``)
and on a MockClock for tests that ask for ``autojump_clock``.

The no-skip rule: with REDIRGATE_REQUIRE_SYSTEM=1 (CI, tests/run.sh) no test
may end as a skip, whatever skipped it.  `tests.support.system.require`
already fails instead of skipping there; this hook also catches a skip from
anywhere else (a plugin, a fixture, a future ``pytest.skip``), so a CI run
that is green has run every test.

Hypothesis runs without its per-example wall-clock deadline (200 ms by
default) and without the too-slow health check: on a machine whose CPUs are
busy with other work an example can take longer, and that says nothing about
the property under test.  Tests that set their own `settings` keep these
unless they say otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.support.system import REQUIRE_ENV, system_required
from tests.support.trio_runner import autojump_clock, pytest_pyfunc_call

__all__ = ["autojump_clock", "pytest_pyfunc_call"]

settings.register_profile("redirgate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("redirgate")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and system_required() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped with {REQUIRE_ENV}=1, where no test may skip: {reason}"
