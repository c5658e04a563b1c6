"""The iso OUT part of bench/real_usb.py: QEMU's usb-audio in the thin-client VM, a tone played by the VM side.

The thin client's QEMU gives it a ``usb-audio`` (a UAC1 speaker, one
192-byte isochronous OUT packet per 1 ms frame) that records every packet it
takes (``pcap=``).  Per server and run: the server exports it, the VM side
attaches a ``usb-redir`` through `CountingRelay` (on this host, between the
VM side and the thin client's port forward, the gateway's route or the
stunnel server: it counts the iso packets the VM side sends) and plays a tone of `TONE_S` seconds with ``aplay``.  The figure
is the share of the packets the VM side sent that the device took: the VM
side is a TCG guest too, and on a loaded host it sends fewer than the tone's
packets (its ``aplay`` may even stop with EIO), which says nothing about the
server; what the server lets through of what it got does.  The server's CPU
in the thin client over the tone is reported per 1,000 packets sent.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import Any

from redirgate.proto.usbredir import CLOSED, NEED_DATA, Cap, Role, UsbredirConnection
from redirgate.proto.usbredir import messages as m

__all__ = ["TONE_S", "CountingRelay", "iso_one"]

TONE_S = 4


class CountingRelay:
    """A TCP relay on 127.0.0.1 to `target_port` that counts the usbredir iso packets the guest sends.

    `guest_dials` (the VM side's usb-redir connects to the relay): the guest is the accepted side;
    otherwise the usbredir host dials the relay (on `listen_port`) and the guest is the side dialled."""

    def __init__(self, target_port: int, *, listen_port: int = 0, guest_dials: bool = True) -> None:
        self.target_port = target_port
        self.guest_dials = guest_dials
        self.iso_packets = 0
        self._listener = socket.create_server(("127.0.0.1", listen_port))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._threads = [threading.Thread(target=self._run, daemon=True)]
        self._threads[0].start()

    def _run(self) -> None:
        try:
            accepted, _ = self._listener.accept()
            dialled = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            return  # closed before the VM side dialled
        guest, host = (accepted, dialled) if self.guest_dials else (dialled, accepted)
        self._sockets += [guest, host]
        back = threading.Thread(target=self._pump, args=(host, guest, None), daemon=True)
        self._threads.append(back)
        back.start()
        self._pump(guest, host, UsbredirConnection(Role.HOST, Cap.all_known()))

    def _pump(self, src: socket.socket, dst: socket.socket, parser: UsbredirConnection | None) -> None:
        while True:
            try:
                data = src.recv(256 * 1024)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return
            if parser is not None:
                parser.receive_data(data)
                while (event := parser.next_event()) is not NEED_DATA and event is not CLOSED:
                    if isinstance(event, m.IsoPacket):
                        self.iso_packets += 1

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(10)


def iso_one(thin: Any, vm: Any, tunnels: Any, role: str, share: Path, log_path: Path) -> dict[str, float]:
    """`role` exporting the usb-audio, one tone: packets sent, taken, share taken, thin-client CPU."""
    from bench.real_usb_serve import guest_cpu_s, served
    from tests.support.thinclient import QEMU_IDS
    from tests.support.usbaudio import iso_out_to_the_device, tone_script

    pcap = share / "audio.pcap"
    start = pcap.stat().st_size
    with served(thin, vm, tunnels, role, QEMU_IDS["usb-audio"], log_path, count_iso=True) as attached:
        cpu0 = guest_cpu_s(thin, attached.pids)
        vm.guest.run(tone_script(TONE_S), 600, check=False)  # an EIO from aplay (a starved VM side) is data too
        cpu1 = guest_cpu_s(thin, attached.pids)
        relay = attached.relay
    # QEMU's pcap writer buffers: the detach (the device goes back to the thin client) pushes the tone's out
    taken, _ = iso_out_to_the_device(pcap.read_bytes(), start)
    sent = relay.iso_packets
    return {
        "iso_sent": sent,
        "iso_taken": taken,
        "iso_share": 100.0 * taken / sent if sent else 0.0,
        "iso_cpu": (cpu1 - cpu0) * 1000 / (sent / 1000) if sent else 0.0,
    }
