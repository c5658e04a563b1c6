"""The real-USB lab: a gateway on the host, a thin-client VM running `client run`, a VM side.

Shared by the real-device tests (``tests/e2e/real_usb``, one lab per
session) and meant for ``bench/``: :func:`running_usb_lab` starts the
gateway with a route for every device the lab knows (:data:`ROUTES`), boots
the thin client (:mod:`tests.support.thinclient`: gadgets, QEMU's USB
devices) and starts one `client run` in it exporting all of them, boots
the VM side (usb-redir hot-added per use), and stops everything on exit.
Booting guests costs seconds, but Python in a TCG guest is slow (`client
run` needs 20-60 s before its tunnel is up), so users keep one lab and plug
gadgets and attach usb-redir devices per use; :meth:`UsbLab.stop_client`
and :meth:`UsbLab.start_client` restart the client when a user must.
"""

from __future__ import annotations

import contextlib
import re
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from redirgate.cli.guestvm.hostroot import AgentError, AgentJob
from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from tests.support import waiting
from tests.support.gateway_procs import GatewayProcess, running_gateway
from tests.support.thinclient import QEMU_IDS, ThinClient, VmSide, start_thinclient, start_vm_side

#: Safety nets only: every wait below ends on an event (a log line, a file, a device).
CLIENT_READY_TIMEOUT_S = 300.0

STICK = (0x1209, 0x7001)
LOOP = (0x1209, 0x7002)
KBD = (0x1209, 0x7003)
COMPOSITE = (0x1209, 0x7004)
ACM = (0x1209, 0x7005)
PRINTER = (0x1209, 0x7006)
#: The [[serial]] export takes the ACM gadget with this serial number only, so
#: `serve-serial` can have another one without the client holding it.
ACM_ROUTED_SERIAL = "acm-routed"
#: The [[parallel]] export's printer: the second usblp device (the first is serve-parallel's).
PRINTER_ROUTED_PATH = "/dev/usb/lp1"
#: The keyboard behind QEMU's usb-hub on the thin client: xHCI's USB 2 root hub is bus 3
#: (dummy_hcd's two buses come first), the hub is on port 3, the keyboard on its port 1.
HUB_CHILD_PORT = "3-3.1"


def _usb(ids: tuple[int, int]) -> str:
    return f"{ids[0]:04x}:{ids[1]:04x}"


ROUTES = [
    LabRoute("stick", f"usb:{_usb(STICK)}"),
    LabRoute("loop", f"usb:{_usb(LOOP)}"),
    LabRoute("kbd", f"usb:{_usb(KBD)}"),
    LabRoute("composite", f"usb:{_usb(COMPOSITE)}"),
    LabRoute("acm", "serial:acm"),
    LabRoute("acm7e1", "serial:acm", extra={"settings": "9600,7E1"}),
    LabRoute("printer", "parallel:printer"),
    LabRoute("hub", f"usb:{_usb(QEMU_IDS['usb-hub'])}"),
    LabRoute("hubkbd", f"usb-port:{HUB_CHILD_PORT}"),
    LabRoute("ftdi", "serial:ftdi", extra={"settings": "19200,8E1"}),
    LabRoute("audio", f"usb:{_usb(QEMU_IDS['usb-audio'])}"),
    LabRoute("ccid", f"usb:{_usb(QEMU_IDS['usb-ccid'])}"),
    LabRoute("uas", f"usb:{_usb(QEMU_IDS['usb-uas'])}"),
]

EXTRA_EXPORT = f"""usb_ports = ["{HUB_CHILD_PORT}"]

[[serial]]
name = "acm"
port = "{_usb(ACM)}:{ACM_ROUTED_SERIAL}"
settings = "115200,8N1"

[[serial]]
name = "ftdi"
port = "{_usb(QEMU_IDS["usb-serial"])}"
settings = "115200,8N1"

[[parallel]]
name = "printer"
port = "{PRINTER_ROUTED_PATH}"
"""


def wait_for_text(path: Path, pattern: str, timeout_s: float, *, start: int = 0) -> re.Match[str]:
    """Wait until the file (read from byte `start` on) matches `pattern`; a safety-net timeout only."""
    return waiting.wait_for_text(path, pattern, start=start, net_s=timeout_s)


def wait_flag(
    flag: Path,
    job: AgentJob,
    context: str | Callable[[], str] = "",
    timeout_s: float = 300.0,
    *,
    give_up: Callable[[], str | None] | None = None,
) -> None:
    """Wait until a guest job creates `flag` in a share; fail at once (with its output) if the job ends first,
    or when `give_up` returns a reason (something that says the flag will never come).

    `context` (or what it returns, read when the wait fails) goes into the failure message."""

    def flagged() -> bool:
        if flag.exists():
            return True
        reason = give_up() if give_up is not None else None
        if reason:
            raise AssertionError(f"no {flag.name} will come: {reason}\n{detail()}")
        if job.done() and not flag.exists():
            result = job.wait()
            raise AssertionError(f"the guest job ended ({result.rc}) before {flag.name}: {result.stderr}\n{detail()}")
        return False

    def detail() -> str:
        return context() if callable(context) else context

    waiting.wait_until(flagged, f"{flag.name} from the guest job", net_s=timeout_s, detail=detail)


@dataclass
class UsbLab:
    share: Path
    thin: ThinClient
    vm: VmSide
    gateway: GatewayProcess
    client_config: Path
    client_log: Path
    ftdi_listener: socket.socket
    client_pid: int | None = None
    client_starts: int = 0

    def route(self, name: str) -> int:
        return self.gateway.routes[name]

    def start_client(self) -> None:
        """Start `client run` in the thin client (a new log each time) and wait until its tunnel is up."""
        self.client_starts += 1
        self.client_log = self.share / f"client-{self.client_starts}.log"
        self.client_pid = self.thin.guest.spawn(
            f"{sys.executable} -m redirgate.cli -v client run --config {self.client_config}", self.client_log
        )
        wait_for_text(self.client_log, r"tunnel to \S+ up", CLIENT_READY_TIMEOUT_S)

    def stop_client(self, sig: str = "TERM") -> None:
        if self.client_pid is None:
            return
        self.thin.guest.signal(self.client_pid, sig)
        self.thin.guest.wait_exit(self.client_pid)
        self.client_pid = None

    def client_log_text(self) -> str:
        return self.client_log.read_text(errors="replace")

    def client_state(self) -> str:
        """Whether `client run` is still alive in the thin client (for failure messages)."""
        if self.client_pid is None:
            return "not started"
        try:
            alive = self.thin.guest.run(f"kill -0 {self.client_pid} 2>/dev/null && echo alive || echo gone", 30.0)
        except AgentError as exc:
            return f"unknown ({exc})"
        return f"pid {self.client_pid} {alive.stdout.strip()}"

    def logs(self) -> str:
        """The tails of the gateway's and the client's logs, for assertion messages."""
        return (
            f"--- gateway:\n{self.gateway.log()[-3000:]}\n"
            f"--- client ({self.client_state()}):\n{self.client_log_text()[-4000:]}"
        )


@contextlib.contextmanager
def running_usb_lab(share: Path, vm_share: Path) -> Iterator[UsbLab]:
    """Gateway (host), thin-client VM with its `client run`, VM side; everything stopped on exit.

    `share` becomes the thin client's share (PKI, configs, images, logs), `vm_share` the VM side's.
    Needs certutil (libnss3-tools) for the emulated smartcard."""
    with contextlib.ExitStack() as stack:
        make_pki(share)
        gateway_config = write_gateway_config(share, ROUTES)
        gateway = stack.enter_context(running_gateway(gateway_config, share / "gateway.log"))
        client_config = write_client_config(
            share,
            gateway.tunnel_port,
            gateway_host="10.0.2.2",
            usb_ids=[
                _usb(STICK),
                _usb(LOOP),
                _usb(KBD),
                _usb(COMPOSITE),
                _usb(QEMU_IDS["usb-hub"]),
                _usb(QEMU_IDS["usb-audio"]),
                _usb(QEMU_IDS["usb-ccid"]),
                _usb(QEMU_IDS["usb-uas"]),
            ],
            extra_export=EXTRA_EXPORT,
        )
        ftdi_listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        thin = start_thinclient(share, ftdi_port=ftdi_listener.getsockname()[1], hostfwd=(7000, 7001, 7002))
        stack.callback(thin.guest.stop)
        thin.add_smartcard()
        vm = start_vm_side(vm_share)
        stack.callback(vm.guest.stop)
        lab = UsbLab(share, thin, vm, gateway, client_config, share / "client-0.log", ftdi_listener)
        lab.start_client()
        stack.callback(lab.stop_client)
        yield lab
