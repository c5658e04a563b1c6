"""QEMU -> gateway route -> TLS tunnel -> `client run` -> emulated flash drive, for real.

Real processes (`redirgate gateway run`, `redirgate client run`), real
mutual TLS on loopback, a stock QEMU and the Debian guest kernel: the guest
mounts the stick, reads the file the test wrote, writes one back.  Then the
same with QEMU speaking TLS to the gateway (tls-creds-x509 from
`pki issue-hypervisor`), and the lifecycle: QEMU started before the
client (held connection), the client killed mid-run (the guest sees the
stick unplugged, the gateway stays up) and restarted (the stick comes back
without touching QEMU, thanks to reconnect=), and a guest reading the
stick while the tunnel is reset twice (resumable channels: no unplug).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.gateway import pki
from tests.support.controllers import CONTROLLERS, usb_redir_args
from tests.support.fault_proxy import fault_proxy
from tests.support.gateway_procs import (
    kill,
    pid_alive,
    restart_by_usr2,
    running_client,
    running_gateway,
    stop_successors,
)
from tests.support.guest import GuestImage, make_fat_image, read_fat_file
from tests.support.qemu import start_guest

BOOT_TIMEOUT_S = 150.0

STICK_SCRIPT = r"""
usb=$(wait_for_usb 1209 0001 90) || fail "the stick never appeared through the gateway"
report_usb "$usb" stick
dev=$(wait_for_block sda 60) || fail "no disk for the stick"
mount_vfat "$dev" /mnt/stick
report_file hello /mnt/stick/hello.txt
echo "written through the gateway" > /mnt/stick/guest.txt
sync
umount /mnt/stick
report unmounted yes
"""


def _lab(tmp_path: Path, *, tls: bool = False) -> tuple[Path, Path]:
    make_pki(tmp_path, hypervisors=["hv1"] if tls else [])
    image = make_fat_image(tmp_path / "stick.img", {"hello.txt": b"hello through the gateway\n"})
    config = write_gateway_config(tmp_path, [LabRoute("stick", "usb:1209:0001", tls=tls)])
    return config, image


@pytest.mark.system
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "qemu-tls"])
def test_guest_mounts_stick_through_gateway(
    tls: bool, guest_image: GuestImage, fat_tools: None, tmp_path: Path
) -> None:
    config, image = _lab(tmp_path, tls=tls)
    with running_gateway(config, tmp_path / "gateway.log") as gw:
        client_config = write_client_config(tmp_path, gw.tunnel_port, virtual=[f"virtual:storage:{image}"])
        args = usb_redir_args("xhci", gw.routes["stick"])
        if tls:
            creds = pki.hypervisor_dir(tmp_path / "pki", "hv1")
            # one option and its value per line (the formatter would split each pair)
            # fmt: off
            args = [*CONTROLLERS["xhci"],
                    "-object", f"tls-creds-x509,id=tls0,endpoint=client,dir={creds}",
                    "-chardev", f"socket,id=redir0,host=127.0.0.1,port={gw.routes['stick']},reconnect=1,tls-creds=tls0",
                    "-device", "usb-redir,chardev=redir0,bus=xhci.0"]
            # fmt: on
        # QEMU first: the gateway holds its connection until the client is there
        with start_guest(STICK_SCRIPT, args, guest=guest_image) as guest:
            guest.wait_for_console(r"Linux version|@@", 60)
            with running_client(client_config, tmp_path / "client.log"):
                result = guest.wait(BOOT_TIMEOUT_S)
        gw_log = gw.log()
    logs = f"--- gateway:\n{gw_log[-4000:]}\n--- client:\n{(tmp_path / 'client.log').read_text()[-3000:]}"
    assert result.rc == 0, f"{result.results}\n{logs}\n--- console:\n{result.console[-3000:]}"
    assert result.results["stick.product"] == "Virtual Flash Drive"
    assert result.files["hello"] == b"hello through the gateway\n"
    assert read_fat_file(image, "guest.txt") == b"written through the gateway\n"
    assert "holding hypervisor" in gw_log  # QEMU came before the client
    if tls:
        assert "is 'hv1' (TLS" in gw_log


REPLUG_SCRIPT = r"""
usb=$(wait_for_usb 1209 0001 90) || fail "no stick"
dev=$(wait_for_block sda 60) || fail "no disk"
mount_vfat "$dev" /mnt/stick
report_file first /mnt/stick/hello.txt
umount /mnt/stick
log first-read-done
n=0
while [ -e "/sys/bus/usb/devices/$usb/idVendor" ]; do sleep 0.1; n=$((n+1)); [ $n -lt 600 ] || fail "the stick never went away"; done
log stick-gone
usb=$(wait_for_usb 1209 0001 90) || fail "the stick never came back"
dev=$(wait_for_block sda 60) || fail "no disk after replug"
mount_vfat "$dev" /mnt/stick
report_file second /mnt/stick/hello.txt
umount /mnt/stick
"""


@pytest.mark.system
def test_client_killed_then_restarted_guest_sees_unplug_and_replug(
    guest_image: GuestImage, fat_tools: None, tmp_path: Path
) -> None:
    config, image = _lab(tmp_path)
    with running_gateway(config, tmp_path / "gateway.log") as gw:
        client_config = write_client_config(tmp_path, gw.tunnel_port, virtual=[f"virtual:storage:{image}"])
        with start_guest(REPLUG_SCRIPT, usb_redir_args("xhci", gw.routes["stick"]), guest=guest_image) as guest:
            with running_client(client_config, tmp_path / "client1.log") as first:
                guest.wait_for_console("@@LOG first-read-done", BOOT_TIMEOUT_S)
                kill(first)  # no goodbye: the TLS connections just die
            # the channel is suspended (resume_grace_s) until the client comes back; a restarted
            # client does not name it (its device state is gone), so the gateway unplugs it then
            with running_client(client_config, tmp_path / "client2.log"):
                guest.wait_for_console("@@LOG stick-gone", 60)
                assert gw.process.poll() is None  # the gateway stays up
                result = guest.wait(BOOT_TIMEOUT_S + 60)
        gw_log = gw.log()
    assert result.rc == 0, f"{result.results}\n--- gateway:\n{gw_log[-4000:]}\n--- console:\n{result.console[-3000:]}"
    assert result.files["first"] == result.files["second"] == b"hello through the gateway\n"
    assert "client thin-01 offline" in gw_log
    assert "(it restarted); ending it" in gw_log


RESUME_SCRIPT = r"""
usb=$(wait_for_usb 1209 0001 90) || fail "the stick never appeared through the gateway"
dev=$(wait_for_block sda 60) || fail "no disk for the stick"
for n in 1 2; do
    log "reading $n"
    report "md5_$n" "$(dd if="$dev" bs=64k iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
done
# from read 3 on, reads go on back to back for RESTART_WINDOW_S: the gateway restarts meanwhile
n=3
end=$(( $(cut -d. -f1 /proc/uptime) + RESTART_WINDOW_S ))
while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do
    log "reading $n"
    report "md5_$n" "$(dd if="$dev" bs=64k iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
    n=$((n + 1))
done
report reads "$((n - 1))"
if dmesg | grep -i "usb disconnect"; then fail "the guest logged a USB disconnect"; fi
report disconnects none
"""


#: seconds of back-to-back reads during which the gateway restarts (its new process starts in a few)
RESTART_WINDOW_S = 40


@pytest.mark.system
@pytest.mark.trio_timeout(600)  # a safety net: a TCG guest's boot and the reads of the stick
async def test_guest_reads_the_stick_across_tunnel_resets_and_a_gateway_restart_without_a_usb_disconnect(
    guest_image: GuestImage, tmp_path: Path
) -> None:
    """Issue 16: the client dials the gateway through a fault proxy that
    resets every tunnel connection (RST both ways) twice while the guest
    reads the whole stick with O_DIRECT, then the gateway is restarted by
    SIGUSR2 while the guest goes on reading: a new process takes QEMU's
    socket and the channel over, the old one exits.  The channel resumes
    each time, every read has the image's md5 and the guest's kernel never
    saw the device go."""
    make_pki(tmp_path)
    image = tmp_path / "stick.img"
    image.write_bytes(os.urandom(8 << 20))
    expected = hashlib.md5(image.read_bytes()).hexdigest()
    config = write_gateway_config(tmp_path, [LabRoute("stick", "usb:1209:0001")])
    successors: list[int] = []
    script = RESUME_SCRIPT.replace("RESTART_WINDOW_S", str(RESTART_WINDOW_S))
    with running_gateway(config, tmp_path / "gateway.log") as gw:
        try:
            async with fault_proxy(("127.0.0.1", gw.tunnel_port)) as proxy:
                client_config = write_client_config(tmp_path, proxy.port, virtual=[f"virtual:storage:{image}"])
                with start_guest(script, usb_redir_args("xhci", gw.routes["stick"]), guest=guest_image) as guest:
                    with running_client(client_config, tmp_path / "client.log"):
                        for n in (1, 2):
                            await guest.wait_for_console_async(rf"@@LOG reading {n}\b", BOOT_TIMEOUT_S)
                            assert proxy.reset() >= 1  # mid-read: the data connection carries the dd
                        await guest.wait_for_console_async(r"@@LOG reading 3\b", BOOT_TIMEOUT_S)
                        old = gw.process.pid
                        new = await restart_by_usr2(gw, tmp_path / "gateway.sock", successors)
                        restarted_during_reads = "@@RESULT reads=" not in guest.console_text()
                        await guest.wait_for_console_async(r"@@RESULT (disconnects|fail)=", BOOT_TIMEOUT_S)
                        result = guest.wait(BOOT_TIMEOUT_S + 60)
        finally:
            stop_successors(gw, tmp_path / "gateway.sock", successors)
        gw_log = gw.log()
    assert result.rc == 0, f"{result.results}\n--- gateway:\n{gw_log[-4000:]}\n--- console:\n{result.console[-3000:]}"
    reads = int(result.results["reads"])
    assert [result.results[f"md5_{n}"] for n in range(1, reads + 1)] == [expected] * reads
    assert gw_log.count("resumes channel") >= 3, gw_log[-4000:]
    assert new != old and not pid_alive(old), "the old gateway process did not exit"
    assert restarted_during_reads, "the guest's reads ended before the restart: raise RESTART_WINDOW_S"
    assert "1 channel(s) handed over" in gw_log, gw_log[-4000:]
