"""A plan is a list of steps; this module owns the step kinds and the one executor that runs them.

Every change the host commands make is a step here, so `--dry-run` prints
exactly what a real run does, and a real run prints each step as it is done.
A step that fails raises SysfsError (or PersistError) naming the step and
the kernel's errno text; the steps before it stay done, and the message says
so.  Only :func:`run_steps` writes anything.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from redirgate.host.errors import PersistError, SysfsError
from redirgate.host.paths import HostPaths

__all__ = [
    "ExpectDriver",
    "LoadModule",
    "RemoveFile",
    "Step",
    "WriteFile",
    "WriteSysfs",
    "run_steps",
]


@dataclasses.dataclass(frozen=True)
class WriteSysfs:
    """Write ``value`` to a sysfs attribute."""

    path: Path
    value: str

    def describe(self) -> str:
        shown = self.value if self.value.strip() else "(empty line)"
        return f"write {shown!s} to {self.path}"


@dataclasses.dataclass(frozen=True)
class LoadModule:
    """``modprobe NAME`` (only on the live system; a test tree must have the driver already)."""

    name: str
    driver: str

    def describe(self) -> str:
        return f"load the {self.driver} driver (modprobe {self.name})"


@dataclasses.dataclass(frozen=True)
class ExpectDriver:
    """Check that ``address`` is now on ``driver`` (None: on no driver; "*": on any driver)."""

    address: str
    driver: str | None

    def describe(self) -> str:
        if self.driver is None:
            return f"check that {self.address} has no driver"
        if self.driver == "*":
            return f"check which driver {self.address} got"
        return f"check that {self.address} is on {self.driver}"


@dataclasses.dataclass(frozen=True)
class WriteFile:
    """Replace a file's content (state records, persistence files)."""

    path: Path
    content: str
    why: str

    def describe(self) -> str:
        return f"write {self.path} ({self.why})"


@dataclasses.dataclass(frozen=True)
class RemoveFile:
    path: Path
    why: str

    def describe(self) -> str:
        return f"remove {self.path} ({self.why})"


Step = WriteSysfs | LoadModule | ExpectDriver | WriteFile | RemoveFile


def _driver_of(paths: HostPaths, address: str) -> str | None:
    try:
        return os.path.basename(os.readlink(paths.device(address) / "driver"))
    except OSError:
        return None


def _run_one(step: Step, paths: HostPaths) -> str:
    """Do one step; returns what was done (for the report)."""
    if isinstance(step, WriteSysfs):
        try:
            with open(step.path, "w") as f:  # one write() per attribute, as the kernel expects
                f.write(step.value)
        except OSError as exc:
            reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
            raise SysfsError(
                str(step.path), f"writing {step.value.strip() or '(empty line)'!r} failed: {reason}"
            ) from exc
        return step.describe()
    if isinstance(step, LoadModule):
        if (paths.pci_drivers / step.driver).is_dir():
            return f"{step.driver} is already loaded"
        if not paths.is_real_system():
            raise SysfsError(
                step.driver, f"driver not loaded under {paths.sysfs} (modprobe only runs on the live /sys)"
            )
        done = subprocess.run(["modprobe", step.name], capture_output=True, text=True, check=False)
        if done.returncode != 0 or not (paths.pci_drivers / step.driver).is_dir():
            raise SysfsError(step.name, f"modprobe failed: {done.stderr.strip() or 'driver still absent'}")
        return step.describe()
    if isinstance(step, ExpectDriver):
        now = _driver_of(paths, step.address)
        if step.driver == "*":
            return f"{step.address} is now on {now or 'no driver'}"
        if now != step.driver:
            raise SysfsError(
                step.address, f"expected driver {step.driver or 'none'}, the kernel left it on {now or 'no driver'}"
            )
        return f"{step.address} is on {now or 'no driver'}"
    if isinstance(step, WriteFile):
        try:
            step.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = step.path.with_name(step.path.name + ".redirgate-tmp")
            tmp.write_text(step.content)
            os.replace(tmp, step.path)
        except OSError as exc:
            raise PersistError(str(step.path), f"cannot write: {exc.strerror or exc}") from exc
        return step.describe()
    try:
        step.path.unlink(missing_ok=True)
    except OSError as exc:
        raise PersistError(str(step.path), f"cannot remove: {exc.strerror or exc}") from exc
    return step.describe()


def run_steps(steps: Sequence[Step], paths: HostPaths, report: Callable[[str], None]) -> None:
    """Run ``steps`` in order, calling ``report`` with each one done.

    On failure the error says how many steps were done before it, so the
    user knows what state the machine is in.
    """
    for index, step in enumerate(steps):
        try:
            report(_run_one(step, paths))
        except (SysfsError, PersistError) as exc:
            done = f"{index} of {len(steps)} steps were done before it" if index else "nothing was changed before it"
            raise type(exc)(exc.subject, f"{exc.reason} ({done})") from exc
