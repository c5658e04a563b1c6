"""The state folder: what each device had before `vfio bind`, so `vfio unbind` can give it back.

One small JSON file per PCI function under ``<state>/vfio/``.  It lives on
/run (tmpfs) on purpose: a reboot resets the bindings, so it must forget
them too.  Only :mod:`redirgate.host.execute` writes here, as a step of a
printed plan.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from redirgate.host.errors import PersistError
from redirgate.host.paths import HostPaths

__all__ = ["Previous", "load_previous", "state_file"]


@dataclasses.dataclass(frozen=True)
class Previous:
    """A device's driver and driver_override before it went to vfio-pci."""

    address: str
    driver: str | None
    driver_override: str | None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True) + "\n"


def state_file(paths: HostPaths, address: str) -> Path:
    return paths.state / "vfio" / f"{address}.json"


def load_previous(paths: HostPaths, address: str) -> Previous | None:
    """The record for ``address``, None when there is none."""
    path = state_file(paths, address)
    try:
        data = json.loads(path.read_text())
        return Previous(address, data.get("driver"), data.get("driver_override"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        raise PersistError(str(path), f"unreadable state ({exc}); remove it to forget the previous driver") from exc
