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
lossless pump on the route, the 8 MiB write never finishes while the client
side takes nothing; with the raw relay it finishes (in ~15 s on a quiet
machine, minutes on a loaded one).

Every wait ends on an event - a console line, a marker on the pty, the
gateway's counters adding up - and its limit is only a safety net: a loaded
machine makes the guest slow, not wrong.  So the test asserts counts (the
flood ended, heartbeats kept coming, every flood byte delivered or counted)
and never a duration or a rate.
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
from tests.support.waiting import wait_until

FLOOD_BYTES = 8 * 1024 * 1024
#: The safety net of every wait below, not a budget: quiet, the guest boots in
#: ~10 s and its flood takes ~15 s; with two CPU hogs beside the suite, minutes.
#: A route that stalls the VM never lets the flood end, so this still fails it.
NET_S = 600.0

GUEST_SCRIPT = r"""
serial_open /dev/ttyS1
serial_send "hello-from-guest"
line=$(serial_recv NET_S) || fail "no line from the host on ttyS1"
report got "$line"
line=$(serial_recv NET_S) || fail "no flood order from the host"
[ "$line" = flood ] || fail "expected flood, got $line"
( i=0; while :; do i=$((i + 1)); log "hb $i"; sleep 0.2; done ) &
beat=$!
log "flood-start"
head -c FLOOD_BYTES /dev/zero | tr '\0' x >&3
log "flood-done"
line=$(serial_recv NET_S) || fail "no resume line from the host"
report resumed "$line"
serial_send "after-stall-ok"
line=$(serial_recv NET_S) || fail "no bye from the host"
kill "$beat"
report bye "$line"
""".replace("FLOOD_BYTES", str(FLOOD_BYTES)).replace("NET_S", str(int(NET_S)))

_BEAT = re.compile(r"@@LOG hb (\d+)")
#: how long one select() on the pty waits before the caller's condition is looked at again
_LOOK_AGAIN_S = 0.2


def _read_until(fd: int, marker: bytes, into: bytearray) -> bytearray:
    """Read the pty master into `into` until `marker` shows up (NET_S: a safety net)."""
    return _read_while(fd, into, lambda: marker not in into, f"{marker!r} on the pty")


def _read_while(fd: int, into: bytearray, more: Callable[[], bool], what: str) -> bytearray:
    """Read the pty master into `into` while `more()` says so.  `more` is looked
    at once the pty has nothing to read (it may ask the gateway, which costs)."""
    deadline = time.monotonic() + NET_S
    while True:
        assert time.monotonic() < deadline, (
            f"no {what} after {NET_S:g} s (the safety net; {len(into)} bytes read, tail {bytes(into[-80:])!r})"
        )
        ready, _, _ = select.select([fd], [], [], _LOOK_AGAIN_S)
        if ready:
            into += os.read(fd, 65536)
        elif not more():
            return into


def _beats(guest: GuestProcess) -> int:
    """The guest's last heartbeat number so far (0 before the first)."""
    return max((int(n) for n in _BEAT.findall(guest.console_text())), default=0)


def _route(tmp_path: Path) -> dict[str, object]:
    # the answer is the event; a loaded gateway may take its time (NET_S: a safety net)
    routes = {r["name"]: r for r in read_status(tmp_path / "gateway.sock", timeout_s=NET_S)["routes"]}
    return routes["console"]  # type: ignore[no-any-return]  # parsed JSON


def _discarded(tmp_path: Path) -> int:
    discarded = _route(tmp_path)["discarded_bytes"]
    assert isinstance(discarded, int), discarded
    return discarded


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
        # A SIGSTOPped client sends no heartbeats and reads none: the tunnel's
        # patience outlasts the longest stall the safety nets allow, so the
        # channel survives it.
        config = write_gateway_config(tmp_path, [LabRoute("console", "serial:console")], heartbeat_timeout_s=2 * NET_S)
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
                start_guest(GUEST_SCRIPT, qemu_args, guest=guest_image, lifetime_s=4 * NET_S) as guest,
            ):
                # -- both ways through the gateway ---------------------------------
                hello = _read_until(master, b"hello-from-guest\n", bytearray())
                assert hello.endswith(b"hello-from-guest\n"), hello
                os.write(master, b"ping-from-host\n")
                guest.wait_for_console(r"@@RESULT got=ping-from-host", NET_S)

                # -- the client side stops taking bytes ------------------------------
                os.write(master, b"flood\n")  # the last read of the pty until the stall ends
                guest.wait_for_console(r"@@LOG flood-start", NET_S)
                try:
                    if stall == "client":
                        os.kill(client.pid, signal.SIGSTOP)
                        stopped = client
                    beats_before = _beats(guest)
                    # The VM is not stalled: its 8 MiB write ends while the client
                    # side takes nothing (through a stalling route it never would).
                    guest.wait_for_console(r"@@LOG flood-done", NET_S)
                    beats_at_done = _beats(guest)
                    # ... and it keeps going after its write, too: one more heartbeat
                    guest.wait_for_console(rf"@@LOG hb {beats_at_done + 1}\b", NET_S)
                    during = _route(tmp_path)
                finally:
                    if stopped is not None:
                        os.kill(stopped.pid, signal.SIGCONT)
                        stopped = None
                record_property("beats_during_flood", beats_at_done - beats_before)
                record_property("discarded_during_stall", during["discarded_bytes"])
                print(
                    f"stall={stall}: flood of {FLOOD_BYTES} bytes done during the stall; "
                    f"{beats_at_done - beats_before} heartbeats meanwhile; "
                    f"gateway discarded {during['discarded_bytes']} bytes"
                )
                # heartbeats kept coming while the guest wrote: a count that grew, not a rate
                assert beats_at_done > beats_before, guest.console_text()[-2000:]
                assert during["state"] == "active"
                assert isinstance(during["discarded_bytes"], int) and during["discarded_bytes"] > 0, during
                assert "took nothing for" in gw.log()

                # -- the client side takes bytes again: the same channel works ---------
                # Drain the pty until every flood byte is accounted for: on the pty
                # or counted as discarded by the gateway.  Then its ring is empty
                # and the discard period over, so the guest's next line arrives
                # whole.  (A byte lost or invented makes this wait fail.)
                got = bytearray()
                _read_while(
                    master,
                    got,
                    lambda: len(got) + _discarded(tmp_path) < FLOOD_BYTES,
                    "account of every flood byte (on the pty or discarded)",
                )
                os.write(master, b"resume\n")
                _read_until(master, b"after-stall-ok\n", got)
                # the gateway's summary lines add up to its counter (the last one may be
                # written just after the bytes that emptied its ring reached the pty)
                discarded = _discarded(tmp_path)
                wait_until(
                    lambda: sum(int(n) for n in re.findall(r"caught up; discarded (\d+) bytes", gw.log())) == discarded,
                    f"the gateway's 'caught up' lines adding up to {discarded} discarded bytes",
                    net_s=NET_S,
                    detail=lambda: gw.log()[-3000:],
                )
                os.write(master, b"bye\n")
                result = guest.wait(time.monotonic() - guest.started_at + NET_S)  # counts from QEMU's start
            after = _route(tmp_path)
        result.check()
        assert result.results["resumed"] == "resume"
        assert result.results["bye"] == "bye"
        flood = bytes(got[: got.index(b"after-stall-ok\n")])
        assert set(flood) == {ord("x")}  # nothing but flood bytes before the marker, nothing invented
        assert after["discarded_bytes"] == discarded
        record_property("flood_bytes_on_the_pty", len(flood))
        record_property("discarded_total", discarded)
        print(f"stall={stall}: {len(flood)} flood bytes reached the pty, {discarded} discarded")
        assert len(flood) + discarded == FLOOD_BYTES  # every byte delivered or counted
    finally:
        os.close(master)
        os.close(slave)
