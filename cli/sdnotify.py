"""systemd's notify protocol for `Type=notify` units, written out (no library).

The whole protocol is one datagram per message to the Unix socket named by
`$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace), holding
`KEY=VALUE` lines: `READY=1` once the service serves, `RELOADING=1` with
`MONOTONIC_USEC=` when a reload starts (then `READY=1` again), `STOPPING=1`,
`STATUS=` free text for `systemctl status`, and `WATCHDOG=1` at least every
`$WATCHDOG_USEC`/2 when the unit sets `WatchdogSec=`.

File-descriptor store (`FileDescriptorStoreMax=` in the unit): `FDSTORE=1`
with `FDNAME=` and the descriptors as SCM_RIGHTS keeps them in the manager
across a stop and start (or a crash and `Restart=`); the next process gets
them back as `$LISTEN_FDS` descriptors from 3 on, named in
`$LISTEN_FDNAMES` (colon-separated), for `$LISTEN_PID` (`listen_fds`).
`FDSTOREREMOVE=1` with `FDNAME=` drops them again.

Outside systemd (`$NOTIFY_SOCKET` unset) every call does nothing.  A send
that fails is logged at debug and dropped: the service never stops over
its supervisor's socket.  Sending is a non-blocking `sendto` on a datagram
socket, so the trio loop calls it directly.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping, Sequence

__all__ = ["LISTEN_FDS_START", "Notifier", "listen_fds"]

#: systemd passes stored and socket-activated descriptors from this number on (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3

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

    def send(self, fds: Sequence[int] = (), /, **fields: object) -> bool:
        """One datagram of `KEY=VALUE` lines (with `fds` as SCM_RIGHTS); True when it went out."""
        if self.address is None:
            return False
        payload = "".join(f"{key}={value}\n" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            if fds:
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                self._sock.sendmsg([payload], rights, 0, self.address)
            else:
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

    def store_fds(self, name: str, fds: Sequence[int]) -> bool:
        """Keep `fds` in the manager's file-descriptor store under `name` (no ':', at most 255
        characters).  Storing one it holds already keeps one copy (systemd compares them)."""
        return self.send(fds, FDSTORE=1, FDNAME=name)

    def remove_stored(self, name: str) -> bool:
        """Drop what the store holds under `name`."""
        return self.send(FDSTOREREMOVE=1, FDNAME=name)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[tuple[str, int]]:
    """The descriptors systemd passed this process (its fd store, or socket activation),
    by name ("unknown" where none was given), and the `LISTEN_*` variables removed (a
    process started from here must not take them for its own).  Each is made
    close-on-exec.  Empty when there are none, or they were meant for another pid."""
    env = os.environ if environ is None else environ
    pid, count, names = (env.pop(key, "") for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))
    if not count.isdigit() or not pid.isdigit() or int(pid) != os.getpid():
        return []
    named = names.split(":") if names else []
    fds = []
    for index in range(int(count)):
        fd = LISTEN_FDS_START + index
        try:
            os.set_inheritable(fd, False)
        except OSError:
            continue  # not open after all
        fds.append((named[index] if index < len(named) and named[index] else "unknown", fd))
    return fds
