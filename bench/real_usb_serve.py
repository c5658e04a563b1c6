"""How each server of bench/real_usb.py gives the thin client's device to the VM side.

Direct, one server per attach: ``redirgate client serve-usb`` (asynchronous
or worker-thread transfers) or Debian's ``usbredirect --as`` listens in the
thin client; the VM side's usb-redir dials it through the thin client's port
forward.

Through a tunnel, set up once per benchmark run (`Tunnels`):

* client + gateway: ``redirgate gateway run`` on this host with a route per
  device, ``redirgate client run`` in the thin client dialling it at
  10.0.2.2 over mutual TLS (started once, kept for the whole run); the VM
  side's usb-redir dials the route.
* usbredirect behind a stunnel4 pair: QEMU's chardev listens (``server=on``)
  on a host port, a stunnel4 server on this host (mutual TLS 1.3, the relay
  benchmark's configuration) connects to it, a stunnel4 client in the thin
  client connects to that server at 10.0.2.2, and ``usbredirect --to`` dials
  the stunnel client per attach.  Same direction as redirgate: the thin
  client dials out, TLS on the thin client's CPU.

`served()` yields the thin-client processes whose CPU the attach costs (the
server; for the stunnel row usbredirect and the stunnel client) once the VM
side is attached, with `CountingRelay` (bench/real_usb_iso.py) in between when
asked.  Every process is stopped by PID, also on failure.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the guest port direct servers listen on in the thin client (one at a time)
GUEST_PORT = 7000
#: the thin client's stunnel4 client listens here (usbredirect --to dials it)
STUNNEL_PLAIN_PORT = 7100
#: Python in a TCG guest on a loaded 2-core host can take minutes to start (safety net only)
SERVER_READY_TIMEOUT_S = 900.0
#: the guests' clock ticks (Debian's kernel: CONFIG_HZ_USER 100)
GUEST_CLK_TCK = 100

DIRECT = ("serve_usb", "serve_usb_threads", "usbredirect")
GATEWAY = "gateway"
STUNNEL = "usbredirect_tls"


def vid_pid(device: tuple[int, int]) -> str:
    return f"{device[0]:04x}:{device[1]:04x}"


def server_command(role: str, device: tuple[int, int]) -> str:
    """The thin-client command of a direct server (or of usbredirect behind stunnel)."""
    serve = f"{sys.executable} -m redirgate.cli client serve-usb --listen 0.0.0.0:{GUEST_PORT} {vid_pid(device)}"
    if role == "serve_usb":
        return f"env REDIRGATE_USB_TRANSFERS=async {serve}"
    if role == "serve_usb_threads":
        # the worker-thread path (what every real transfer took before libusb's asynchronous API)
        return f"env REDIRGATE_USB_TRANSFERS=threads {serve}"
    if role == STUNNEL:
        return f"usbredirect --device {vid_pid(device)} --to 127.0.0.1:{STUNNEL_PLAIN_PORT}"
    return f"usbredirect --device {vid_pid(device)} --as 0.0.0.0:{GUEST_PORT}"


def wait_listening_script(port: int) -> str:
    """Shell for the thin client: wait until something listens on `port` (IPv4 or IPv6)."""
    return f"until grep -qi ':{port:04X} 00000000:0000 0A' /proc/net/tcp /proc/net/tcp6; do sleep 0.1; done\n"


def guest_cpu_s(thin: Any, pids: Sequence[int]) -> float:
    """utime + stime of thin-client processes, in seconds."""
    total = 0
    for pid in pids:
        fields = thin.run(f"cat /proc/{pid}/stat").rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / GUEST_CLK_TCK


def stop_guest_process(thin: Any, pid: int) -> None:
    """Stop a thin-client process (TERM, then KILL)."""
    thin.guest.signal(pid, "TERM")
    try:
        thin.guest.wait_exit(pid, 60)
    except Exception:
        thin.guest.signal(pid, "KILL")
        thin.guest.wait_exit(pid, 60)


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Tunnels:
    """The gateway and the stunnel pair of one run, and the routes' ports by device."""

    routes: dict[tuple[int, int], int]
    client_pid: int
    stunnel_client_pid: int
    #: the stunnel server on this host connects here: QEMU's listening chardev (or a relay in front of it)
    chardev_port: int
    client_log: Path


def start_tunnels(thin: Any, share: Path, devices: dict[str, tuple[int, int]], stack: contextlib.ExitStack) -> Tunnels:
    """Gateway + `client run`, and the stunnel4 pair, for `devices` (route name -> VID:PID); stopped by `stack`."""
    from bench.relay_setup import make_pki as stunnel_pki
    from bench.relay_setup import stunnel_client_config, stunnel_config
    from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
    from tests.support.gateway_procs import running_gateway
    from tests.support.usblab import CLIENT_READY_TIMEOUT_S, wait_for_text

    make_pki(share)
    routes = [LabRoute(name, f"usb:{vid_pid(ids)}") for name, ids in devices.items()]
    gateway = stack.enter_context(running_gateway(write_gateway_config(share, routes), share / "gateway.log"))
    config = write_client_config(
        share, gateway.tunnel_port, gateway_host="10.0.2.2", usb_ids=[vid_pid(ids) for ids in devices.values()]
    )
    client_log = share / "client-run.log"
    client_pid = thin.guest.spawn(f"{sys.executable} -m redirgate.cli -v client run --config {config}", client_log)
    stack.callback(stop_guest_process, thin, client_pid)

    pki = stunnel_pki(share / "stunnel-pki")
    tls_port, chardev_port = _free_port(), _free_port()
    server_conf = stunnel_config(pki, tls_port, chardev_port, share)
    server = subprocess.Popen(["stunnel4", str(server_conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(_stop_popen, server)
    client_conf = stunnel_client_config(
        pki, STUNNEL_PLAIN_PORT, tls_port, share, accept_host="127.0.0.1", connect_host="10.0.2.2"
    )
    stunnel_client_pid = thin.guest.spawn(f"stunnel4 {client_conf}", share / "stunnel-client.out")
    stack.callback(stop_guest_process, thin, stunnel_client_pid)
    thin.run(wait_listening_script(STUNNEL_PLAIN_PORT), SERVER_READY_TIMEOUT_S)
    wait_for_text(client_log, r"tunnel to \S+ up", CLIENT_READY_TIMEOUT_S)
    return Tunnels(
        {ids: gateway.routes[name] for name, ids in devices.items()},
        client_pid,
        stunnel_client_pid,
        chardev_port,
        client_log,
    )


def _stop_popen(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@dataclass
class Attached:
    """One attach of the VM side: the thin-client processes it costs, and the relay counting iso packets."""

    pids: list[int]
    relay: Any = None
    log_path: Path | None = None


@contextlib.contextmanager
def served(
    thin: Any,
    vm: Any,
    tunnels: Tunnels | None,
    role: str,
    device: tuple[int, int],
    log_path: Path,
    *,
    count_iso: bool = False,
) -> Iterator[Attached]:
    """`role` serves `device` to the VM side for a `with` block (attached on entry, detached and stopped on exit)."""
    from bench.real_usb_iso import CountingRelay

    with contextlib.ExitStack() as stack:
        if role in DIRECT:
            pid = thin.guest.spawn(server_command(role, device), log_path)
            stack.callback(stop_guest_process, thin, pid)
            thin.run(wait_listening_script(GUEST_PORT), SERVER_READY_TIMEOUT_S)
            target, pids = thin.guest.host_port(GUEST_PORT), [pid]
        elif role == GATEWAY:
            assert tunnels is not None
            target, pids, log_path = tunnels.routes[device], [tunnels.client_pid], tunnels.client_log
        else:  # STUNNEL: QEMU listens, the thin client dials out through the stunnel pair
            assert tunnels is not None
            relay = None
            port = tunnels.chardev_port
            if count_iso:  # the relay takes the stunnel server's connection, QEMU listens behind it
                port = _free_port()
                relay = CountingRelay(port, listen_port=tunnels.chardev_port, guest_dials=False)
                stack.callback(relay.close)
            redir = vm.attach(port, listen=True)
            stack.callback(vm.detach, redir)
            pid = thin.guest.spawn(server_command(role, device), log_path)
            stack.callback(stop_guest_process, thin, pid)
            yield Attached([pid, tunnels.stunnel_client_pid], relay, log_path)
            return
        relay = None
        if count_iso:
            relay = CountingRelay(target)
            stack.callback(relay.close)
            target = relay.port
        redir = vm.attach(target)
        stack.callback(vm.detach, redir)
        yield Attached(pids, relay, log_path)
