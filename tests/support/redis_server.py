"""A real `redis-server` on a free loopback port, for the cluster tests.

`running_redis(directory)` starts Debian's redis-server with no persistence
(`--save ''`, `--appendonly no`) in its own folder, waits for its "Ready to
accept connections" line, yields a `RedisServer`, and stops it by PID
(SIGTERM, then SIGKILL) on exit, also when the test fails.  `stop()` and
`start()` take it down and bring it back on the same port (the tests of a
Redis outage); `password` adds `requirepass`; `tls` makes it TLS only
(`rediss://`; clients authenticate with the password, not a certificate).

redis-server cannot bind port 0 (`--port 0` turns TCP off), so the port is
one the kernel just handed out to a socket we closed.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.services import stop
from tests.support.system import require_system

__all__ = ["RedisServer", "free_port", "running_redis"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    binary: str
    directory: Path
    port: int
    password: str | None = None
    #: (certificate, key, CA): TLS only (rediss://)
    tls: tuple[Path, Path, Path] | None = None
    process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def start(self, ready_timeout_s: float = 30.0) -> None:
        argv = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            "0" if self.tls else str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            "--logfile",
            "",
            "--protected-mode",
            "no",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.tls:
            cert, key, ca = self.tls
            argv += ["--tls-port", str(self.port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            argv += ["--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.process = process
        watchdog = threading.Timer(ready_timeout_s, process.kill)
        watchdog.start()
        seen: list[str] = []
        try:
            assert process.stdout is not None
            for line in process.stdout:
                seen.append(line)
                if "Ready to accept connections" in line:
                    break
            else:
                raise RuntimeError(f"redis-server did not start (exit {process.poll()}):\n{''.join(seen)}")
        except BaseException:
            stop(process)
            raise
        finally:
            watchdog.cancel()
            self.log_path.write_text("".join(seen))
        # the rest of its output: drained to the log so a chatty server never blocks on a full pipe
        threading.Thread(target=self._drain, args=(process,), daemon=True).start()

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        with contextlib.suppress(ValueError, OSError), open(self.log_path, "a") as log:
            for line in process.stdout:
                log.write(line)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


@contextlib.contextmanager
def running_redis(
    directory: Path, *, password: str | None = None, tls: tuple[Path, Path, Path] | None = None
) -> Iterator[RedisServer]:
    binary = require_system("redis-server")
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(binary, directory, free_port(), password, tls)
    try:
        server.start()
        yield server
    finally:
        server.stop()
