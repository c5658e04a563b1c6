"""systemd's notify protocol for `Type=notify` units, written out (no library).

The whole protocol is one datagram per message to the Unix socket named by
`$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace), holding
`KEY=VALUE` lines: `READY=1` once the service serves, `RELOADING=1` with
`MONOTONIC_USEC=` when a reload starts (then `READY=1` again), `STOPPING=1`,
`STATUS=` free text for `systemctl status`, and `WATCHDOG=1` at least every
`$WATCHDOG_USEC`/2 when the unit sets `WatchdogSec=`.

Outside systemd (`$NOTIFY_SOCKET` unset) every call does nothing.  A send
that fails is logged at debug and dropped: the service never stops over
its supervisor's socket.  Sending is a non-blocking `sendto` on a datagram
socket, so the trio loop calls it directly.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Messages to the service manager (see the module docstring)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if name.startswith("@"):
            self.address = "\0" + name[1:]
        elif name.startswith("/"):
            self.address = name
        self.watchdog_usec: int | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(usec)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1 (half the unit's WatchdogSec), or None."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def send(self, **fields: object) -> bool:
        """One datagram of `KEY=VALUE` lines; True when it went out."""
        if self.address is None:
            return False
        payload = "".join(f"{key}={value}\n" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            log.debug("notify socket %r: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send(READY=1, **({"STATUS": status} if status else {}))

    def reloading(self) -> bool:
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> bool:
        return self.send(STOPPING=1)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text.replace("\n", " "))

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
