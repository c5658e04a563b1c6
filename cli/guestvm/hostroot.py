"""A guest that runs this machine's own programs: the host's root over virtio-9p, a command agent.

The busybox guest of :mod:`redirgate.cli.guestvm.image` can only run what its
initramfs holds.  A *host-root guest* mounts the host's ``/`` read-only over
virtio-9p and chroots into it, so it runs this very checkout, its venv, the
host's python3, modprobe (the guest kernel is the host's installed Debian
kernel, whose modules are under ``/lib/modules``), pcscd, stty, ...  Used for
the real-USB thin-client VM (``tests/support/thinclient.py``) and for any guest
that needs more than busybox; the machine type and devices are parameters.

Inside the chroot ``/tmp``, ``/run``, ``/root``, ``/var/tmp`` and ``/var/log``
are tmpfs.  The root is mounted with ``cache=loose``: files the host changes
after the guest read them may look stale there, so everything exchanged at run
time goes through the **share**: a writable host folder (cache off) mounted in
the guest at the same absolute path, so a path means the same file on both
sides.

The agent (busybox shell, outside the chroot) polls ``SHARE/.agent`` every
0.1 s; a job is a shell script the host drops there as ``N.sh``.  The agent
renames it ``N.run``, runs it with ``/bin/sh`` in the chroot in a session of
its own (so jobs run concurrently and one can be killed with its children),
writes its pid to ``N.pid``, its output to ``N.out``/``N.err`` and, when it
ends, its status to ``N.rc``.  Jobs start with PATH, HOME=/root, TMPDIR=/tmp,
LANG=C.UTF-8 and PYTHONDONTWRITEBYTECODE=1 set.

Networking (optional): QEMU user networking with a virtio NIC; the guest is
10.0.2.15 and reaches the host's loopback as 10.0.2.2.  Host forwards are
bound to a free host port chosen by QEMU (port 0), read back through the
human monitor (``info usernet``), which :meth:`HostRootGuest.hmp` also
offers for hotplugging devices.

Every QEMU is ended by its PID (:meth:`HostRootGuest.stop`, the context
manager, and :mod:`redirgate.cli.guestvm.qemu`'s atexit hook); the guest
powers itself off after `lifetime_s` whatever the host does.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import shlex
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import trio

from redirgate.cli.guestvm.image import GuestImage, build_guest
from redirgate.cli.guestvm.qemu import GuestError, GuestProcess, start_guest

__all__ = [
    "BOOT_TIMEOUT_S",
    "DEFAULT_JOB_TIMEOUT_S",
    "HOSTROOT_MODULES",
    "AgentError",
    "AgentJob",
    "AgentResult",
    "HostRootGuest",
    "build_hostroot_guest",
    "start_hostroot_guest",
]

#: What the initramfs loads before it can reach the host's root: virtio, 9p
#: and the virtio NIC.  Everything else is modprobe'd from inside the chroot.
HOSTROOT_MODULES: tuple[str, ...] = ("virtio_pci", "9pnet_virtio", "9p", "virtio_net")

#: Generous backstops for TCG on 2 busy cores; tests wait on the agent's files.
BOOT_TIMEOUT_S = 300.0
DEFAULT_JOB_TIMEOUT_S = 300.0
#: A shared guest may live for a whole test session.
DEFAULT_LIFETIME_S = 3600.0
_POLL_S = 0.05
_HMP_PROMPT = b"(qemu) "

#: Host paths the 9p export must not shadow in the guest (they get tmpfs).
_TMPFS_DIRS = ("tmp", "run", "var/tmp", "var/log")

_JOB_ENV = (
    "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp TMPDIR=/tmp "
    "LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1\n"
)

# The guest's /test.sh (busybox, before the chroot).  {share} and {agent} are
# shell-quoted host paths; the agent loop never returns: stop() ends QEMU.
_BOOT_SCRIPT = r"""
R=/hostroot
SHARE={share}
A=$R{agent}
mkdir -p $R
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot $R
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
for d in {tmpfs_dirs}; do mount -t tmpfs -o mode=1777 tmpfs "$R/$d"; done
mkdir -p "$R$SHARE" 2>/dev/null || true
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share "$R$SHARE"
if [ -e /sys/class/net/eth0 ]; then
    ip link set lo up
    ip addr add 10.0.2.15/24 dev eth0
    ip link set eth0 up
    ip route add default via 10.0.2.2
fi
if [ -f "$A/setup.sh" ]; then
    chroot $R /bin/sh "{agent}/setup.sh" > "$A/setup.out" 2>&1 || {{ echo "@@AGENT setup-failed"; cat "$A/setup.out"; exit 1; }}
fi
echo "@@AGENT ready"
set +e
while :; do
    for f in "$A"/*.sh; do
        [ -e "$f" ] || continue
        n=$(basename "$f" .sh)
        case "$n" in setup) continue;; esac
        mv "$f" "$A/$n.run"
        (
            setsid chroot $R /bin/sh "{agent}/$n.run" > "$A/$n.out" 2> "$A/$n.err" < /dev/null &
            echo $! > "$A/$n.pid"
            wait $!
            echo $? > "$A/$n.rc.tmp"
            mv "$A/$n.rc.tmp" "$A/$n.rc"
        ) &
    done
    sleep 0.1
done
"""


class AgentError(GuestError):
    """A job did not run to the end, or ended with a non-zero status when one was required."""


@dataclasses.dataclass(frozen=True)
class AgentResult:
    """What one job left behind."""

    script: str
    rc: int
    stdout: str
    stderr: str

    def check(self) -> AgentResult:
        """Return self, or raise AgentError when the job failed."""
        if self.rc != 0:
            raise AgentError(
                f"guest job exited {self.rc}: {self.stderr.strip()[-2000:]}\n--- stdout ---\n"
                f"{self.stdout.strip()[-2000:]}\n--- script ---\n{self.script.strip()[-1500:]}"
            )
        return self


class AgentJob:
    """A job running in the guest; `wait()` (or `wait_async()`) returns its result."""

    def __init__(self, guest: HostRootGuest, number: int, script: str) -> None:
        self.guest = guest
        self.number = number
        self.script = script
        base = guest.agent_dir / str(number)
        self._rc = base.with_suffix(".rc")
        self._out = base.with_suffix(".out")
        self._err = base.with_suffix(".err")
        self._pid = base.with_suffix(".pid")

    def done(self) -> bool:
        """True once the job ended (its status file is there)."""
        return self._rc.exists()

    def _check_alive(self) -> None:
        if self.guest.process.returncode() is not None:
            raise AgentError(
                f"QEMU exited ({self.guest.process.returncode()}) while job {self.number} ran",
                self.guest.process.console_text(),
            )

    def _result(self) -> AgentResult:
        return AgentResult(
            self.script,
            int(self._rc.read_text().strip() or "-1"),
            self._out.read_text(errors="replace") if self._out.exists() else "",
            self._err.read_text(errors="replace") if self._err.exists() else "",
        )

    def _timeout(self, timeout_s: float) -> AgentError:
        self.kill()
        out = self._out.read_text(errors="replace") if self._out.exists() else ""
        err = self._err.read_text(errors="replace") if self._err.exists() else ""
        return AgentError(
            f"guest job {self.number} did not end within {timeout_s} s (killed)\n--- stdout ---\n{out[-2000:]}"
            f"\n--- stderr ---\n{err[-2000:]}\n--- script ---\n{self.script.strip()[-1500:]}",
            self.guest.process.console_text(),
        )

    def wait(self, timeout_s: float = DEFAULT_JOB_TIMEOUT_S) -> AgentResult:
        """Block until the job ended; AgentError (and the job killed) after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self.done():
            self._check_alive()
            if time.monotonic() >= deadline:
                raise self._timeout(timeout_s)
            time.sleep(_POLL_S)
        return self._result()

    async def wait_async(self, timeout_s: float = DEFAULT_JOB_TIMEOUT_S) -> AgentResult:
        """Like wait(), polling with trio.sleep (cancellable; the job keeps running then)."""
        deadline = time.monotonic() + timeout_s
        while not self.done():
            self._check_alive()
            if time.monotonic() >= deadline:
                raise self._timeout(timeout_s)
            await trio.sleep(_POLL_S)
        return self._result()

    def kill(self, sig: str = "KILL") -> None:
        """Signal the job's whole session (the job and what it started without a setsid of its own)."""
        if self.done() or not self._pid.exists():
            return
        pid = self._pid.read_text().strip()
        if pid:
            self.guest.start(f"kill -{sig} -- -{pid} 2>/dev/null || true")


class HostRootGuest:
    """A running host-root guest: run jobs, read the monitor, find forwarded ports. End it with stop()."""

    def __init__(self, process: GuestProcess, share: Path, monitor_path: Path, *, owns_share: bool) -> None:
        self.process = process
        self.share = share
        self.agent_dir = share / ".agent"
        self.monitor_path = monitor_path
        self._owns_share = owns_share
        self._numbers = itertools.count(1)

    # -- jobs ------------------------------------------------------------

    def start(self, script: str) -> AgentJob:
        """Hand the agent a shell script (run by /bin/sh in the chroot); returns at once."""
        number = next(self._numbers)
        tmp = self.agent_dir / f"{number}.tmp"
        tmp.write_text(_JOB_ENV + script)
        os.rename(tmp, self.agent_dir / f"{number}.sh")
        return AgentJob(self, number, script)

    def run(self, script: str, timeout_s: float = DEFAULT_JOB_TIMEOUT_S, *, check: bool = True) -> AgentResult:
        """Run a script to its end; raises AgentError on a non-zero status unless check=False."""
        result = self.start(script).wait(timeout_s)
        return result.check() if check else result

    async def run_async(
        self, script: str, timeout_s: float = DEFAULT_JOB_TIMEOUT_S, *, check: bool = True
    ) -> AgentResult:
        result = await self.start(script).wait_async(timeout_s)
        return result.check() if check else result

    def spawn(self, command: str, log_path: Path) -> int:
        """Start a long-running command in a session of its own (output to `log_path`, in the share);
        returns its guest pid.  End it with :meth:`signal`."""
        result = self.run(
            f"setsid sh -c {shlex.quote('exec ' + command)} > {shlex.quote(str(log_path))} 2>&1 "
            "< /dev/null &\necho $!\n"
        )
        return int(result.stdout.split()[-1])

    def signal(self, pid: int, sig: str = "TERM") -> None:
        """Send a signal to a guest process (no error if it is gone)."""
        self.run(f"kill -{sig} {pid} 2>/dev/null || true")

    def wait_exit(self, pid: int, timeout_s: float = DEFAULT_JOB_TIMEOUT_S) -> None:
        """Wait (in the guest) until a process is gone."""
        self.run(f"while kill -0 {pid} 2>/dev/null; do sleep 0.1; done", timeout_s)

    def share_dir(self, name: str) -> Path:
        """A fresh folder in the share (same path on both sides)."""
        path = self.share / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    # -- the monitor -----------------------------------------------------

    def hmp(self, command: str, timeout_s: float = 30.0) -> str:
        """Run one human-monitor command and return its output (without the echo and prompt)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(self.monitor_path))
            _read_until_prompt(sock)
            sock.sendall(command.encode() + b"\n")
            reply = _read_until_prompt(sock).decode(errors="replace").replace("\r", "")
        lines = reply.split("\n")
        # The monitor echoes the command line (with terminal escapes) first.
        return "\n".join(lines[1:]).strip()

    def host_port(self, guest_port: int) -> int:
        """The host port QEMU bound for the forward to `guest_port` (tcp)."""
        usernet = self.hmp("info usernet")
        for line in usernet.splitlines():
            m = re.search(r"TCP\[HOST_FORWARD\]\s+\d+\s+(\S+)\s+(\d+)\s+\S+\s+(\d+)", line)
            if m and int(m.group(3)) == guest_port:
                return int(m.group(2))
        raise GuestError(f"no host forward to guest port {guest_port} in `info usernet`:\n{usernet}")

    # -- lifetime ----------------------------------------------------------

    def stop(self) -> None:
        """End QEMU by its PID and remove the share (if it made it). Idempotent."""
        try:
            self.process.stop()
        finally:
            if self._owns_share:
                shutil.rmtree(self.share, ignore_errors=True)

    def __enter__(self) -> HostRootGuest:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _read_until_prompt(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(_HMP_PROMPT):
        chunk = sock.recv(65536)
        if not chunk:
            raise GuestError("the QEMU monitor closed the connection")
        data += chunk
    return data[: -len(_HMP_PROMPT)]


def build_hostroot_guest(extra_modules: Sequence[str] = ()) -> GuestImage:
    """The cached kernel + initramfs with only what reaching the host's root needs."""
    return build_guest(extra_modules, base_modules=HOSTROOT_MODULES)


def start_hostroot_guest(
    qemu_args: Sequence[str] = (),
    *,
    hostfwd: Sequence[int] = (),
    network: bool = True,
    setup: str = "",
    mem_mib: int = 512,
    share: Path | None = None,
    guest: GuestImage | None = None,
    lifetime_s: float = DEFAULT_LIFETIME_S,
    boot_timeout_s: float = BOOT_TIMEOUT_S,
    append_extra: str = "",
) -> HostRootGuest:
    """Boot a host-root guest and return once its agent is ready.

    `qemu_args` come last on QEMU's command line (``-machine q35`` there
    overrides the default ``pc``; controllers, devices).  `hostfwd` lists
    guest TCP ports forwarded from a free port on the host's 127.0.0.1
    (see :meth:`HostRootGuest.host_port`).  `setup` is a shell script run in
    the chroot before the agent starts (modprobe, mounts); its failure fails
    the boot.  `share` is the writable folder (a fresh temporary one unless
    given; it is removed by stop() only if this function made it).
    """
    image = guest if guest is not None else build_hostroot_guest()
    owns_share = share is None
    share = Path(tempfile.mkdtemp(prefix="redirgate-hostroot-")) if share is None else Path(share)
    share = share.resolve()
    agent = share / ".agent"
    agent.mkdir(parents=True, exist_ok=True)
    for stale in agent.iterdir():
        stale.unlink()
    monitor_path = agent / "hmp.sock"
    if setup:
        (agent / "setup.sh").write_text(_JOB_ENV + "set -e\n" + setup)
    # one option and its value per line (the formatter would split each pair)
    # fmt: off
    args = [
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={share},mount_tag=share,security_model=none,multidevs=remap",
        "-chardev", f"socket,id=hmp0,path={monitor_path},server=on,wait=off",
        "-mon", "chardev=hmp0,mode=readline",
    ]
    # fmt: on
    if network:
        forwards = "".join(f",hostfwd=tcp:127.0.0.1:0-:{port}" for port in hostfwd)
        args += ["-nic", f"user,model=virtio-net-pci{forwards}"]
    script = _BOOT_SCRIPT.format(
        share=shlex.quote(str(share)),
        agent=shlex.quote(str(agent)),
        tmpfs_dirs=" ".join(_TMPFS_DIRS),
    )
    try:
        process = start_guest(
            script,
            [*args, *qemu_args],
            guest=image,
            mem_mib=mem_mib,
            lifetime_s=lifetime_s,
            append_extra=append_extra,
        )
    except BaseException:
        if owns_share:
            shutil.rmtree(share, ignore_errors=True)
        raise
    hostroot = HostRootGuest(process, share, monitor_path, owns_share=owns_share)
    try:
        match = process.wait_for_console(r"@@AGENT (ready|setup-failed)|@@DONE rc=\d+", boot_timeout_s)
        if match.group(0) != "@@AGENT ready":
            setup_out = (agent / "setup.out").read_text(errors="replace") if (agent / "setup.out").exists() else ""
            raise GuestError(f"the host-root guest did not start its agent\n{setup_out}", process.console_text())
    except BaseException:
        hostroot.stop()
        raise
    return hostroot
