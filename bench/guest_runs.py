"""What the real-guest dd benchmarks (guest_dd, real_usb) share.

Their plan (runs, image size, transfer size), whether the tests' guest can
boot here, and the frame around one measurement: the result document with the
machine and its load before and after, "skipped" when the guest cannot run,
"failed" when the measurement raised one of the expected errors.  Each module
keeps what it measures and how it reports it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.relay_setup import machine


@dataclass(frozen=True)
class Plan:
    runs: int
    image_mib: int
    transfer_mib: int


def choose_plan(quick: Plan, full: Plan, *, is_quick: bool, runs: int | None) -> Plan:
    """The quick or the full plan, with `runs` instead of its own when given."""
    plan = quick if is_quick else full
    return Plan(runs, plan.image_mib, plan.transfer_mib) if runs else plan


def guest_unavailable() -> str | None:
    """Why the tests' guest cannot boot here, or None."""
    import tests.support.guest  # noqa: F401  (first: the tests' guest cache, .cache/guest)
    from redirgate.cli.guestvm.image import guest_unavailable_reason
    from redirgate.cli.guestvm.qemu import qemu_unavailable_reason

    return qemu_unavailable_reason() or guest_unavailable_reason()


def run_measurement(
    what: str,
    plan: Plan,
    *,
    unavailable: Callable[[], str | None],
    measure: Callable[[Plan, Path], dict[str, Any]],
    workdir_prefix: str,
    errors: tuple[type[BaseException], ...],
) -> dict[str, Any]:
    """`measure(plan, workdir)` in a temporary folder; its figures in a JSON-ready document, or why not."""
    started = time.monotonic()
    result: dict[str, Any] = {
        "what": what,
        "plan": vars(plan),
        "machine": machine(),
        "loadavg_start": os.getloadavg(),
    }
    why = unavailable()
    if why is not None:
        result["skipped"] = why
        return result
    with tempfile.TemporaryDirectory(prefix=workdir_prefix) as tmp:
        try:
            result.update(measure(plan, Path(tmp)))
        except errors as exc:
            result["failed"] = f"{type(exc).__name__}: {exc}"
    result["loadavg_end"] = os.getloadavg()
    result["wall_s"] = time.monotonic() - started
    return result
