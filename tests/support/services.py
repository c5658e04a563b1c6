"""Start redirgate commands as real processes for end-to-end tests.

`redirgate(*args)` runs one command to its end and returns what it printed.

`running(argv)` starts `python -m redirgate.cli ...`, waits for the line that
says where it listens (`... on HOST:PORT`), yields it, and ends the process
by its PID afterwards, also when the test fails.  Its log goes to a file so
a chatty process can never block on a full pipe; the file is printed when
the process dies early.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

_LISTEN_RE = re.compile(r" on (?P<host>[0-9a-fA-F.:\[\]]+):(?P<port>\d+)\s*$")


@dataclass
class Service:
    process: subprocess.Popen[str]
    host: str
    port: int
    log_path: Path
    #: the line that said where it listens (e.g. `serving ... on HOST:PORT`)
    banner: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running(argv: Sequence[str], log_path: Path, *, ready_timeout_s: float = 30.0) -> Iterator[Service]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "redirgate.cli", "-v", *argv],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=env,
        )
    try:
        host, port, banner = _wait_listening(process, log_path, ready_timeout_s)
        yield Service(process, host, port, log_path, banner)
    finally:
        stop(process)


def _wait_listening(process: subprocess.Popen[str], log_path: Path, timeout_s: float) -> tuple[str, int, str]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = process.stdout.readline()
            if not line:
                break
            found = _LISTEN_RE.search(line)
            if found:
                return found["host"].strip("[]"), int(found["port"]), line.strip()
    raise RuntimeError(
        f"{' '.join(process.args)} did not report a listening address "  # type: ignore[arg-type]  # args: our list of str
        f"(exit {process.poll()}); its log:\n{log_path.read_text(errors='replace')}"
    )


def stop(process: subprocess.Popen[str], grace_s: float = 10.0) -> None:
    """SIGTERM the process by PID, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace_s)
    if process.stdout is not None:
        process.stdout.close()


def redirgate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m redirgate.cli *args` to its end, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "redirgate.cli", *args], capture_output=True, text=True, timeout=timeout
    )
