"""A real QEMU guest prints to /dev/lp0; the bytes reach the thin client's printer.

guest `cat > /dev/lp0` -> Linux lp + parport_pc -> QEMU isa-parallel ->
`-chardev socket,reconnect=1` -> `gateway run` route -> mutual TLS tunnel ->
`client run` with a `[[parallel]]` export -> the stand-in printer: a FIFO
the test reads (status unknown, like any non-lp node).

The printer is *away* when the guest starts printing (nobody reads the FIFO:
the client cannot open it), which is the case that matters with QEMU: its
parallel model blocks the vCPU, with the big lock held, until the socket
takes the byte, so a client that stopped reading would freeze the VM.  The
guest must finish its first write and say so while the printer is still
away; then the printer comes back and gets every byte in order: the first
part from the client's queue, then a second part the guest prints live.  Real processes, real TLS, stock QEMU
7.2 and the Debian guest kernel; every process is stopped by PID.
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path
from typing import Any

import pytest

from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.gateway.admin import read_status
from tests.support.gateway_procs import running_client, running_gateway
from tests.support.guest import GuestImage
from tests.support.qemu import start_guest
from tests.support.waiting import wait_until

BOOT_TIMEOUT_S = 150.0

SCRIPT = r"""
cat /etc/part1.bin > /dev/lp0
report part1 written
sleep 3
cat /etc/part2.bin > /dev/lp0
report part2 written
"""


def _status(admin: Path) -> dict[str, Any]:
    return read_status(admin)


def _exported(admin: Path) -> bool:
    try:
        return any(d["id"] == "parallel:printer" for c in _status(admin)["clients"] for d in c["devices"])
    except OSError:  # the admin socket is not there yet
        return False


def _read_fifo(fd: int, n: int, timeout_s: float) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, n - len(got))
        except BlockingIOError:
            continue
        if not chunk:  # no writer this moment (the client reopens every 0.5 s)
            time.sleep(0.05)  # a poll interval: a FIFO at EOF stays readable until a writer opens it
        got += chunk
    return bytes(got)


@pytest.mark.system
def test_guest_prints_through_gateway_while_printer_away_then_back(guest_image: GuestImage, tmp_path: Path) -> None:
    part1 = bytes(range(256)) * 16 + b"\x1b@Invoice 1\r\n\x0c"  # every byte value, then ESC/P text
    part2 = b"page two\r\n" * 50 + b"\x0c"
    lp = tmp_path / "lp0"
    os.mkfifo(lp)  # nobody reads it yet: the printer is away
    make_pki(tmp_path)
    config = write_gateway_config(tmp_path, [LabRoute("printer", "parallel:printer")])
    with running_gateway(config, tmp_path / "gateway.log") as gw:
        client_config = write_client_config(
            tmp_path,
            gw.tunnel_port,
            extra_export=f'\n[[parallel]]\nname = "printer"\nport = "{lp}"\nring_bytes = 1048576\n',
        )
        admin = tmp_path / "gateway.sock"
        client_log = tmp_path / "client.log"
        with running_client(client_config, client_log):
            wait_until(lambda: _exported(admin), "the client exporting parallel:printer", detail=gw.log)
            # one option and its value per line (the formatter would split each pair)
            # fmt: off
            qemu_args = [
                "-chardev", f"socket,id=lp,host=127.0.0.1,port={gw.routes['printer']},reconnect=1",
                "-parallel", "chardev:lp",
            ]
            # fmt: on
            files = {"/etc/part1.bin": part1, "/etc/part2.bin": part2}
            with start_guest(SCRIPT, qemu_args, guest=guest_image, files=files) as guest:
                # The VM keeps running although nothing can reach the printer.
                guest.wait_for_console(r"@@RESULT part1=written", BOOT_TIMEOUT_S)
                assert "waiting for the printer" in client_log.read_text()
                reader = os.open(lp, os.O_RDONLY | os.O_NONBLOCK)  # the printer is back
                try:
                    got = _read_fifo(reader, len(part1) + len(part2), 60)
                    result = guest.wait(BOOT_TIMEOUT_S + 60).check()
                finally:
                    os.close(reader)
            assert got == part1 + part2, f"{len(got)} of {len(part1) + len(part2)} bytes\n{client_log.read_text()}"
            assert result.results["part2"] == "written"
            text = client_log.read_text()
            assert "printer ready again" in text, text
            assert "queue is full" not in text and "(0 discarded)" in text, text
            # part1 waited in the client's queue in full; part2 went to the printer live.
            assert f"opened {lp} (status unknown, {len(part1)} bytes queued)" in text, text
