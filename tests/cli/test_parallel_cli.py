"""`redirgate client serve-parallel` as a real process; a FIFO read by the test
stands in for /dev/lp0 (status unknown).  What a consumer sends while nobody
reads the FIFO (the printer is away) is queued and printed when it is back."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.services import running
from tests.support.waiting import wait_until


def _read_fifo(fd: int, n: int, timeout_s: float = 20) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, n - len(got))
            except BlockingIOError:
                continue
            if not chunk:  # no writer at this moment: a FIFO at EOF is always readable, so poll
                time.sleep(0.05)
            got += chunk
    return bytes(got)


def test_serve_parallel_queues_while_the_printer_is_away(tmp_path: Path) -> None:
    lp = tmp_path / "lp0"
    os.mkfifo(lp)
    argv = ["client", "serve-parallel", "--listen", "127.0.0.1:0", "--ring-bytes", "100000", str(lp)]
    with running(argv, tmp_path / "serve.log") as service:
        payload = bytes(range(256)) * 200  # 51200 bytes
        with socket.create_connection((service.host, service.port), timeout=10) as vm:
            vm.sendall(payload)
            with socket.create_connection((service.host, service.port), timeout=10) as second:
                second.settimeout(10)
                assert b"already in use" in second.recv(200)
        # the service tried the printer while nobody read it
        wait_until(
            lambda: "nobody reads" in service.log(), "the service finding nobody at the printer", detail=service.log
        )
        reader = os.open(lp, os.O_RDONLY | os.O_NONBLOCK)
        try:
            assert _read_fifo(reader, len(payload)) == payload
        finally:
            os.close(reader)
        log = service.log()
    assert "waiting for the printer" in log and "nobody reads" in log
    assert "printer ready again" in log


def test_serve_parallel_refuses_bad_arguments() -> None:
    def redirgate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "redirgate.cli", *args], capture_output=True, text=True, timeout=60
        )

    relative = redirgate("client", "serve-parallel", "--listen", "127.0.0.1:0", "lp0")
    assert relative.returncode == 2 and "expected a device path" in relative.stderr
    ring = redirgate("client", "serve-parallel", "--listen", "127.0.0.1:0", "--ring-bytes", "0", "/dev/lp0")
    assert ring.returncode == 2 and "ring-bytes" in ring.stderr


def test_serve_parallel_banner_says_what_the_first_open_found(tmp_path: Path) -> None:
    """Not "(printer absent)" before the port was even opened."""
    present = tmp_path / "print.out"
    present.write_bytes(b"")
    with running(["client", "serve-parallel", "--listen", "127.0.0.1:0", str(present)], tmp_path / "a.log") as service:
        banner = service.banner
    assert banner.startswith(f"serving {present} (status unknown) on 127.0.0.1:")
    missing = tmp_path / "lp9"
    with running(["client", "serve-parallel", "--listen", "127.0.0.1:0", str(missing)], tmp_path / "b.log") as service:
        banner = service.banner
    assert banner.startswith(f"serving {missing} (printer absent (waiting for the printer: {missing}: no such device))")
