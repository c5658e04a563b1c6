"""Boots the test guest under QEMU (TCG) and collects what its script reports.

Owns the QEMU command line, the guest's serial console capture (a file
chardev, so an unread pipe can never stall QEMU), timeouts, the console
protocol parser (see :mod:`redirgate.cli.guestvm.image` for the markers) and the
lifetime of every QEMU process it starts: each one is ended by its PID in
``stop()``, which ``run_guest``, the context manager and an atexit hook all
call, also on test failure or KeyboardInterrupt.

Never uses /dev/kvm: Debian's kernel does not finish booting under the
software KVM variant on these machines, so it is always ``-accel tcg``.

Two ways in:

* ``run_guest(script, qemu_args, timeout_s)`` boots, waits for the script's
  ``@@DONE`` and returns a :class:`GuestResult`;
* ``start_guest(script, qemu_args)`` returns a running :class:`GuestProcess`
  (a context manager) for tests that must act while the guest runs; it has
  blocking ``wait`` / ``wait_for_console`` and trio-friendly ``wait_async`` /
  ``wait_for_console_async`` that poll without blocking the event loop.
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import trio

from redirgate.cli.guestvm.image import GuestImage, build_guest, script_archive

__all__ = [
    "DEFAULT_APPEND",
    "DEFAULT_LIFETIME_S",
    "DEFAULT_TIMEOUT_S",
    "GuestCrashed",
    "GuestError",
    "GuestProcess",
    "GuestResult",
    "GuestScriptFailed",
    "GuestTimeout",
    "parse_console",
    "qemu_argv",
    "run_guest",
    "start_guest",
]

log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
QBOOT_ROM = Path("/usr/share/qemu/qboot.rom")
#: guest-testing-facts.md: the args that make a stock Debian kernel boot fast
#: and quietly; panic=-1 + -no-reboot turn a guest panic into a QEMU exit.
DEFAULT_APPEND = "console=ttyS0 panic=-1 quiet usb-storage.delay_use=0"
#: Per boot, generous for 2-core CI under TCG (a boot to the script is ~5-15 s).
DEFAULT_TIMEOUT_S = 90.0
#: After @@DONE the guest runs `poweroff -f`; QEMU should be gone quickly.
_EXIT_GRACE_S = 15.0
#: Guest-side backstop (see start_guest); far above any test's own timeout.
DEFAULT_LIFETIME_S = 900.0
_STOP_GRACE_S = 5.0
_POLL_S = 0.05

_RESULT_RE = re.compile(r"@@RESULT ([^=\s]+)=(.*)")
_FILE_RE = re.compile(r"@@FILE ([^=\s]+)=([A-Za-z0-9+/=]*)")
_LOG_RE = re.compile(r"@@LOG (.*)")
_MODFAIL_RE = re.compile(r"@@MODFAIL (\S+)")
_SCRIPT_RE = re.compile(r"@@SCRIPT uptime=([0-9.]+)")
_DONE_RE = re.compile(r"@@DONE rc=(-?\d+)")
_DONE_BYTES_RE = re.compile(rb"@@DONE rc=-?\d+\r?\n")


class GuestError(Exception):
    """The guest did not deliver a result; carries the reason and the console tail."""

    def __init__(self, reason: str, console: str = "", qemu_log: str = "") -> None:
        self.reason = reason
        self.console = console
        self.qemu_log = qemu_log
        details = [reason]
        if qemu_log.strip():
            details.append("--- qemu output ---\n" + qemu_log.strip()[-2000:])
        if console:
            details.append("--- guest console (tail) ---\n" + console[-4000:])
        super().__init__("\n".join(details))


class GuestTimeout(GuestError):
    """The guest script did not finish within the timeout (QEMU was stopped)."""


class GuestCrashed(GuestError):
    """QEMU exited before the guest reported @@DONE (panic, QEMU error, ...)."""


class GuestScriptFailed(GuestError):
    """The guest script finished with a non-zero status (from GuestResult.check)."""


@dataclasses.dataclass(frozen=True)
class GuestResult:
    """What a finished guest reported on its console."""

    console: str
    #: `report key value` lines; the last value of a key wins.
    results: dict[str, str]
    #: `report_file key path` lines, decoded to the exact bytes.
    files: dict[str, bytes]
    #: `log text` lines in order.
    logs: list[str]
    #: Modules /init failed to insmod (crct10dif-pclmul does under TCG).
    module_failures: list[str]
    #: Exit status of /test.sh.
    rc: int
    #: QEMU's exit status (0 after poweroff; negative if we had to kill it).
    qemu_returncode: int | None
    #: Host seconds from starting QEMU to QEMU's exit.
    wall_s: float
    #: Host seconds from starting QEMU to seeing @@SCRIPT (boot + module load).
    script_start_s: float | None
    #: Guest uptime when the script started, as the guest saw it.
    guest_script_uptime_s: float | None

    def check(self) -> GuestResult:
        """Return self, or raise GuestScriptFailed when the script failed."""
        if self.rc != 0:
            reason = self.results.get("fail", "no fail reason reported")
            raise GuestScriptFailed(f"guest script exited {self.rc}: {reason}", self.console)
        return self


@dataclasses.dataclass
class _Parsed:
    results: dict[str, str]
    files: dict[str, bytes]
    logs: list[str]
    module_failures: list[str]
    rc: int | None
    guest_script_uptime_s: float | None


def parse_console(console: str) -> _Parsed:
    """Pick the @@ markers out of a console transcript (kernel lines are ignored)."""
    parsed = _Parsed({}, {}, [], [], None, None)
    for raw in console.splitlines():
        line = raw.rstrip("\r")
        if m := _RESULT_RE.search(line):
            parsed.results[m.group(1)] = m.group(2)
        elif m := _FILE_RE.search(line):
            parsed.files[m.group(1)] = base64.b64decode(m.group(2))
        elif m := _LOG_RE.search(line):
            parsed.logs.append(m.group(1))
        elif m := _MODFAIL_RE.search(line):
            parsed.module_failures.append(m.group(1))
        elif m := _SCRIPT_RE.search(line):
            parsed.guest_script_uptime_s = float(m.group(1))
        elif m := _DONE_RE.search(line):
            parsed.rc = int(m.group(1))
    return parsed


def qemu_argv(
    guest: GuestImage,
    initrd: Path,
    console_path: Path,
    qemu_args: Sequence[str] = (),
    *,
    mem_mib: int = 256,
    append_extra: str = "",
) -> list[str]:
    """The full QEMU command line; `qemu_args` come last (devices, -serial for ttyS1...).

    ttyS0 is the console file; a `-serial` in `qemu_args` becomes ttyS1.
    -nographic leaves an LPT at 0x378 on a null backend unless `qemu_args`
    has `-parallel`.  No NIC, no VGA, no monitor (add `-qmp` if needed).
    """
    # one option and its value per line (the formatter would split each pair)
    # fmt: off
    argv = [
        QEMU_BINARY,
        "-accel", "tcg",
        "-machine", "pc",
        "-smp", "1",
        "-m", str(mem_mib),
        "-nographic",
        "-no-reboot",
        "-monitor", "none",
        "-nic", "none",
        "-vga", "none",
        "-chardev", f"file,id=guestconsole,path={console_path}",
        "-serial", "chardev:guestconsole",
        "-kernel", str(guest.kernel),
        "-initrd", str(initrd),
        "-append", f"{DEFAULT_APPEND} {append_extra}".strip(),
    ]
    # fmt: on
    if guest.kernel_format == "pvh-elf" and QBOOT_ROM.is_file():
        argv += ["-bios", str(QBOOT_ROM)]
    return argv + list(qemu_args)


_LIVE: weakref.WeakSet[GuestProcess] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_LIVE):
        proc.stop()


class GuestProcess:
    """A running guest.  Always end it with stop() (or use it as a context manager)."""

    def __init__(self, argv: list[str], workdir: Path, *, keep_workdir: bool = False) -> None:
        self.argv = argv
        self.workdir = workdir
        self.console_path = workdir / "console.log"
        self._qemu_log_path = workdir / "qemu.log"
        self._keep_workdir = keep_workdir
        self._console = bytearray()
        self._console_offset = 0
        self._script_seen_s: float | None = None
        self._done_seen_s: float | None = None
        self._exited_s: float | None = None
        self._stopped = False
        self._qemu_log = ""
        self.started_at = time.monotonic()
        with open(self._qemu_log_path, "wb") as qemu_log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal ^C reaches pytest, which stops us
            )
        self.pid = self._proc.pid
        _LIVE.add(self)
        log.info("started QEMU pid %d: %s", self.pid, " ".join(argv))

    # -- observation ------------------------------------------------------

    def _pump(self) -> None:
        """Read new console bytes, note markers and process exit."""
        try:
            with open(self.console_path, "rb") as f:
                f.seek(self._console_offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            # Markers may straddle two reads: look at the new bytes plus a margin.
            window_start = max(0, len(self._console) - 64)
            self._console += chunk
            self._console_offset += len(chunk)
            window = bytes(self._console[window_start:])
            now = time.monotonic() - self.started_at
            if self._script_seen_s is None and b"@@SCRIPT " in window:
                self._script_seen_s = now
            if self._done_seen_s is None and _DONE_BYTES_RE.search(window):
                self._done_seen_s = now
        if self._exited_s is None and self._proc.poll() is not None:
            self._exited_s = time.monotonic() - self.started_at
            # One last read: QEMU may have written more before exiting.
            self._pump()

    def console_text(self) -> str:
        """The console so far (CR stripped)."""
        if not self._stopped:
            self._pump()
        return self._console.decode(errors="replace").replace("\r", "")

    def returncode(self) -> int | None:
        """QEMU's exit status, None while it runs."""
        return self._proc.poll()

    def _qemu_output(self) -> str:
        if self._stopped:
            return self._qemu_log
        try:
            return self._qemu_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _check_console(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        self._pump()
        match = pattern.search(self.console_text())
        if match is None and self._exited_s is not None:
            raise GuestCrashed(
                f"QEMU exited ({self._proc.returncode}) before the console showed {pattern.pattern!r}",
                self.console_text(),
                self._qemu_output(),
            )
        return match

    def wait_for_console(self, pattern: str | re.Pattern[str], timeout_s: float) -> re.Match[str]:
        """Block until `pattern` (a regex) appears on the console and return the match.

        GuestTimeout after `timeout_s` (QEMU keeps running: the caller's
        `with` ends it); GuestCrashed if QEMU exits first.
        """
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout_s
        while (match := self._check_console(compiled)) is None:
            if time.monotonic() >= deadline:
                raise GuestTimeout(
                    f"console did not show {compiled.pattern!r} within {timeout_s} s",
                    self.console_text(),
                    self._qemu_output(),
                )
            time.sleep(_POLL_S)
        return match

    async def wait_for_console_async(
        self, pattern: str | re.Pattern[str], timeout_s: float, poll_s: float = _POLL_S
    ) -> re.Match[str]:
        """Like wait_for_console, polling with trio.sleep (cancellable)."""
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout_s
        while (match := self._check_console(compiled)) is None:
            if time.monotonic() >= deadline:
                raise GuestTimeout(
                    f"console did not show {compiled.pattern!r} within {timeout_s} s",
                    self.console_text(),
                    self._qemu_output(),
                )
            await trio.sleep(poll_s)
        return match

    # -- completion -------------------------------------------------------

    def _finished(self) -> bool:
        """True once QEMU exited, or @@DONE was seen and the exit grace ran out."""
        self._pump()
        if self._exited_s is not None:
            return True
        if self._done_seen_s is not None:
            if time.monotonic() - self.started_at - self._done_seen_s > _EXIT_GRACE_S:
                log.warning("QEMU pid %d did not exit after @@DONE; stopping it", self.pid)
                self.stop()
                return True
        return False

    def _result(self, timeout_s: float) -> GuestResult:
        if self._exited_s is None and self._done_seen_s is None:
            self.stop()
            raise GuestTimeout(f"guest did not finish within {timeout_s} s", self.console_text(), self._qemu_output())
        console = self.console_text()
        parsed = parse_console(console)
        if parsed.rc is None:
            raise GuestCrashed(f"QEMU exited ({self._proc.returncode}) without @@DONE", console, self._qemu_output())
        wall = self._exited_s if self._exited_s is not None else time.monotonic() - self.started_at
        return GuestResult(
            console=console,
            results=parsed.results,
            files=parsed.files,
            logs=parsed.logs,
            module_failures=parsed.module_failures,
            rc=parsed.rc,
            qemu_returncode=self._proc.returncode,
            wall_s=wall,
            script_start_s=self._script_seen_s,
            guest_script_uptime_s=parsed.guest_script_uptime_s,
        )

    def wait(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> GuestResult:
        """Block until the guest powered off and return what it reported.

        `timeout_s` counts from QEMU's start (not from this call); when it
        runs out QEMU is stopped and GuestTimeout raised.  GuestCrashed if
        QEMU exited without @@DONE.
        """
        deadline = self.started_at + timeout_s
        while not self._finished() and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        return self._result(timeout_s)

    async def wait_async(self, timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = _POLL_S) -> GuestResult:
        """Like wait(), polling with trio.sleep so other tasks keep running.

        Cancelling it leaves QEMU running; the caller's `with` block (or
        stop()) ends it.
        """
        # Polled: what ends the wait is QEMU's exit and the @@DONE line in
        # its console file, neither of which any task here can signal.
        with trio.move_on_after(max(0.0, self.started_at + timeout_s - time.monotonic())):
            while not self._finished():  # noqa: ASYNC110  # see above
                await trio.sleep(poll_s)
        return self._result(timeout_s)

    def stop(self) -> None:
        """End QEMU by its PID (SIGTERM, then SIGKILL) and remove the work dir. Idempotent."""
        if self._stopped:
            return
        try:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(_STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(_STOP_GRACE_S)
            if self._exited_s is None:
                self._exited_s = time.monotonic() - self.started_at
            self._pump()
            self._qemu_log = self._qemu_output()
        finally:
            self._stopped = True
            _LIVE.discard(self)
            if not self._keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> GuestProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_guest(
    script: str,
    qemu_args: Sequence[str] = (),
    *,
    guest: GuestImage | None = None,
    files: Mapping[str, bytes] | None = None,
    mem_mib: int = 256,
    append_extra: str = "",
    keep_workdir: bool = False,
    lifetime_s: float = DEFAULT_LIFETIME_S,
) -> GuestProcess:
    """Boot the guest with `script` as /test.sh (plus `files` in the initramfs).

    Returns at once with QEMU running; the caller must stop() it (use `with`).
    `guest` defaults to build_guest() (cached).  The per-run initrd is the
    cached base archive with a small script archive appended.  The guest
    powers itself off `lifetime_s` after boot even if nobody stops QEMU
    (the host process was SIGKILLed): a backstop, not a test timeout.
    """
    image = guest if guest is not None else build_guest()
    workdir = Path(tempfile.mkdtemp(prefix="redirgate-guest-"))
    try:
        initrd = workdir / "initrd.img"
        with open(initrd, "wb") as out:
            base = image.initrd.read_bytes()
            out.write(base)
            # Linux only takes an uncompressed archive that starts 4-aligned
            # after a compressed one (init/initramfs.c); zeros are skipped.
            out.write(bytes(-len(base) % 512))
            out.write(script_archive(script, files, lifetime_s=max(1, int(lifetime_s))))
        argv = qemu_argv(image, initrd, workdir / "console.log", qemu_args, mem_mib=mem_mib, append_extra=append_extra)
        return GuestProcess(argv, workdir, keep_workdir=keep_workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def run_guest(
    script: str,
    qemu_args: Sequence[str] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    guest: GuestImage | None = None,
    files: Mapping[str, bytes] | None = None,
    mem_mib: int = 256,
    append_extra: str = "",
) -> GuestResult:
    """Boot, run `script`, wait for @@DONE (or raise GuestTimeout/GuestCrashed), stop QEMU.

    The result's rc is the script's status; call `.check()` to raise on rc != 0.
    """
    with start_guest(
        script,
        qemu_args,
        guest=guest,
        files=files,
        mem_mib=mem_mib,
        append_extra=append_extra,
        lifetime_s=timeout_s + 30.0,
    ) as proc:
        return proc.wait(timeout_s)


def qemu_unavailable_reason() -> str | None:
    """Why QEMU cannot run here (None when qemu-system-x86_64 is on PATH)."""
    if shutil.which(QEMU_BINARY) is None:
        return f"{QEMU_BINARY} not on PATH (install qemu-system-x86)"
    if not os.access(QBOOT_ROM, os.R_OK):
        log.info("no %s: PVH boots use SeaBIOS", QBOOT_ROM)
    return None
