"""A QEMU with no guest at all (q35, paused with -S unless asked) and a QMP socket: enough for device_add and chardev-add.

Tests of QMP hot plug and of QEMU argument syntax need QEMU's device model,
not a running kernel: this starts ``qemu-system-x86_64 -S`` (the vCPU never
runs, so it costs almost no CPU), waits until its QMP socket accepts, and
ends it by PID when the ``with`` ends, also on failure.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.system import require_system
from tests.support.waiting import wait_until

__all__ = ["bare_qemu", "qemu_rejects"]

#: A safety net, not a budget: QEMU is listening after well under a second, seconds on a loaded machine.
_START_TIMEOUT_S = 300.0


def _argv(qemu: str, args: Sequence[str], *, paused: bool = True) -> list[str]:
    stop = ["-S"] if paused else []
    return [qemu, "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", *stop, "-m", "64", *args]


@contextlib.contextmanager
def bare_qemu(workdir: Path, args: Sequence[str] = (), *, paused: bool = True) -> Iterator[Path]:
    """Run QEMU with ``args`` plus a QMP socket; yields the socket's path.

    ``paused=False`` lets the firmware run (it finds nothing to boot and halts): usb-redir sends
    nothing to its chardev while the VM is stopped.
    """
    qemu = require_system("qemu-system-x86_64")
    qmp = workdir / "qmp.sock"
    log = workdir / "qemu.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*_argv(qemu, args, paused=paused), "-qmp", f"unix:{qmp},server=on,wait=off"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def accepting() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"QEMU exited ({proc.returncode}): {log.read_text()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(qmp))
                return True
            return False

        wait_until(accepting, "QEMU's QMP socket accepting", net_s=_START_TIMEOUT_S, detail=log.read_text)
        yield qmp
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def qemu_rejects(args: Sequence[str]) -> str:
    """QEMU's error for ``args``, which must make it exit (a missing host device, say)."""
    qemu = require_system("qemu-system-x86_64")
    done = subprocess.run(_argv(qemu, args), capture_output=True, text=True, timeout=_START_TIMEOUT_S, check=False)
    assert done.returncode != 0, f"QEMU accepted {args}"
    return (done.stdout + done.stderr).strip()
