"""A real VM's second serial port through the gateway, and a VM that never stalls.

The guest (Debian kernel + busybox under QEMU TCG) has its console on ttyS0
(a file chardev, read by the test) and ttyS1 on `-chardev socket,...,
reconnect=1` pointed at a `gateway run` route `serial:console`; `client run`
exports a pty the test holds, over mutual TLS.  Lines cross both ways:
guest -> pty master, pty master -> guest.

Then the client side stops taking bytes - the test stops reading the pty
(the "device" case: the client is alive but its port takes nothing, so it
stops reading its data connection), or also SIGSTOPs the client process
(the "client" case) - while the guest writes 8 MiB to ttyS1 and prints a
heartbeat line on its console every 0.2 s.  The heartbeat keeps advancing
and the guest's write *finishes* during the stall, the gateway reports the
discarded bytes in its status and its log, and once the client side takes
bytes again the same channel carries lines both ways - every flood byte
either reached the pty or was counted as discarded.

What tells a stalled VM here is the write finishing: QEMU's 16550 throttles
only the guest's writer (THRE stays clear), the console keeps printing
either way.  And the flood must outgrow the kernel's socket buffers: QEMU's
send buffer alone took ~4 MiB from a peer that never read.  With the
lossless pump on the route, the 8 MiB write did not finish within 60 s in
either case; with the raw relay it finishes in ~15 s.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
import tty
from collections.abc import Callable
from pathlib import Path

import pytest

from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.gateway.admin import read_status
from tests.support.gateway_procs import running_client, running_gateway
from tests.support.guest import GuestImage
from tests.support.qemu import GuestProcess, start_guest

BOOT_TIMEOUT_S = 90.0
FLOOD_BYTES = 8 * 1024 * 1024
#: Guest-side: 8 MiB through the emulated 16550 takes ~12 s under TCG here.
FLOOD_TIMEOUT_S = 60.0

GUEST_SCRIPT = r"""
serial_open /dev/ttyS1
serial_send "hello-from-guest"
line=$(serial_recv 90) || fail "no line from the host on ttyS1"
report got "$line"
line=$(serial_recv 90) || fail "no flood order from the host"
[ "$line" = flood ] || fail "expected flood, got $line"
( i=0; while :; do i=$((i + 1)); log "hb $i"; sleep 0.2; done ) &
beat=$!
log "flood-start"
head -c FLOOD_BYTES /dev/zero | tr '\0' x >&3
log "flood-done"
line=$(serial_recv 120) || fail "no resume line from the host"
report resumed "$line"
serial_send "after-stall-ok"
line=$(serial_recv 60) || fail "no bye from the host"
kill "$beat"
report bye "$line"
""".replace("FLOOD_BYTES", str(FLOOD_BYTES))

_BEAT = re.compile(r"@@LOG hb (\d+)")


def _read_until(fd: int, marker: bytes, timeout_s: float, into: bytearray | None = None) -> bytearray:
    """Read the pty master until `marker` shows up; everything read so far."""
    out = into if into is not None else bytearray()
    deadline = time.monotonic() + timeout_s
    while marker not in out:
        left = deadline - time.monotonic()
        assert left > 0, (
            f"{marker!r} not on the pty within {timeout_s} s (got {len(out)} bytes, tail {bytes(out[-80:])!r})"
        )
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            out += os.read(fd, 65536)
    return out


def _drain(fd: int, done: Callable[[], bool], timeout_s: float, quiet_s: float = 1.0) -> bytearray:
    """Read the pty master until `done()` and then `quiet_s` without a byte."""
    out = bytearray()
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    while not (done() and time.monotonic() - last >= quiet_s):
        left = deadline - time.monotonic()
        assert left > 0, f"the pty did not go quiet within {timeout_s} s ({len(out)} bytes read)"
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            out += os.read(fd, 65536)
            last = time.monotonic()
    return out


def _beats(guest: GuestProcess) -> int:
    return max((int(n) for n in _BEAT.findall(guest.console_text())), default=0)


def _route(tmp_path: Path) -> dict[str, object]:
    routes = {r["name"]: r for r in read_status(tmp_path / "gateway.sock")["routes"]}
    return routes["console"]  # type: ignore[no-any-return]  # parsed JSON


@pytest.mark.system
@pytest.mark.parametrize("stall", ["device", "client"])
def test_guest_serial_through_gateway_and_a_stalled_client_never_stalls_the_vm(
    stall: str, guest_image: GuestImage, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    try:
        make_pki(tmp_path)
        # A SIGSTOPped client sends no heartbeats: keep the tunnel's patience
        # well above the stall so the channel survives it.
        config = write_gateway_config(tmp_path, [LabRoute("console", "serial:console")], heartbeat_timeout_s=120.0)
        with running_gateway(config, tmp_path / "gateway.log") as gw:
            client_config = write_client_config(
                tmp_path,
                gw.tunnel_port,
                extra_export=f'\n[[serial]]\nname = "console"\nport = "{path}"\nsettings = "115200,8N1"\n',
            )
            # one option and its value per line (the formatter would split each pair)
            # fmt: off
            qemu_args = [
                "-chardev", f"socket,id=s1,host=127.0.0.1,port={gw.routes['console']},reconnect=1",
                "-serial", "chardev:s1",  # the harness's console is the first -serial (ttyS0): this is ttyS1
            ]
            # fmt: on
            stopped: subprocess.Popen[str] | None = None
            with (
                running_client(client_config, tmp_path / "client.log") as client,
                start_guest(GUEST_SCRIPT, qemu_args, guest=guest_image) as guest,
            ):
                # -- both ways through the gateway ---------------------------------
                hello = _read_until(master, b"hello-from-guest\n", BOOT_TIMEOUT_S)
                assert hello.endswith(b"hello-from-guest\n"), hello
                os.write(master, b"ping-from-host\n")
                guest.wait_for_console(r"@@RESULT got=ping-from-host", 30)

                # -- the client side stops taking bytes ------------------------------
                os.write(master, b"flood\n")  # the last read of the pty until the stall ends
                guest.wait_for_console(r"@@LOG flood-start", 30)
                try:
                    if stall == "client":
                        os.kill(client.pid, signal.SIGSTOP)
                        stopped = client
                    stall_started = time.monotonic()
                    beats_before = _beats(guest)
                    guest.wait_for_console(r"@@LOG flood-done", FLOOD_TIMEOUT_S)
                    flood_s = time.monotonic() - stall_started
                    time.sleep(1.0)  # the VM keeps going after its write, too
                    beats_during = _beats(guest) - beats_before
                    during = _route(tmp_path)
                finally:
                    if stopped is not None:
                        os.kill(stopped.pid, signal.SIGCONT)
                        stopped = None
                record_property("flood_s", round(flood_s, 1))
                record_property("beats_during_stall", beats_during)
                record_property("discarded_during_stall", during["discarded_bytes"])
                print(
                    f"stall={stall}: flood of {FLOOD_BYTES} bytes done {flood_s:.1f} s into the stall; "
                    f"{beats_during} heartbeats meanwhile; gateway discarded {during['discarded_bytes']} bytes"
                )
                # 0.2 s apart: at least half of the expected beats, whatever the load
                assert beats_during >= max(3, int((flood_s + 1.0) / 0.2 / 2)), guest.console_text()[-2000:]
                assert during["state"] == "active"
                assert isinstance(during["discarded_bytes"], int) and during["discarded_bytes"] > 0, during
                assert "took nothing for" in gw.log()

                # -- the client side takes bytes again: the same channel works ---------
                # Drain the pty until the gateway caught up (its buffer is empty, so
                # it takes bytes again) and nothing more comes: a line sent before
                # that could land in the discard period.
                got = _drain(master, lambda: "caught up" in gw.log(), 60)
                os.write(master, b"resume\n")
                _read_until(master, b"after-stall-ok\n", 60, into=got)
                os.write(master, b"bye\n")
                result = guest.wait(BOOT_TIMEOUT_S + FLOOD_TIMEOUT_S + 120)
            after = _route(tmp_path)
        result.check()
        assert result.results["resumed"] == "resume"
        assert result.results["bye"] == "bye"
        flood = bytes(got[: got.index(b"after-stall-ok\n")])
        assert set(flood) == {ord("x")}  # nothing but flood bytes before the marker, nothing invented
        discarded = after["discarded_bytes"]
        assert isinstance(discarded, int)
        record_property("flood_bytes_on_the_pty", len(flood))
        record_property("discarded_total", discarded)
        print(f"stall={stall}: {len(flood)} flood bytes reached the pty, {discarded} discarded")
        assert len(flood) + discarded == FLOOD_BYTES  # every byte delivered or counted
        summaries = [int(n) for n in re.findall(r"caught up; discarded (\d+) bytes", gw.log())]
        assert sum(summaries) == discarded, gw.log()[-3000:]
    finally:
        os.close(master)
        os.close(slave)
