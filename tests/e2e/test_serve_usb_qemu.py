"""`redirgate client serve-usb` with a real QEMU and a real guest kernel.

The newcomer's path, proved: serve an image file as a USB stick with the real
command, point a stock QEMU (`-chardev socket` + `-device usb-redir`) at it,
and the Debian guest kernel enumerates the stick, reads a file the test put
in the image, writes a new one, and the image holds it after power-off.
Behind xHCI, EHCI (with UHCI companions) and UHCI.  The keyboard test runs
the engine in-process so the test can make the emulated keyboard type.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from redirgate.client.usb.selector import parse_selector
from redirgate.client.usb.serve import serve_listen
from redirgate.client.usb.source import SelectorSource
from redirgate.client.virtual import KeyboardDevice, VirtualBackend
from tests.support.controllers import CONTROLLERS, SYSFS_SPEED, usb_redir_args
from tests.support.guest import GuestImage, list_fat_files, make_fat_image, read_fat_file
from tests.support.qemu import run_guest, start_guest
from tests.support.services import running

BOOT_TIMEOUT_S = 120.0

STICK_SCRIPT = r"""
usb=$(wait_for_usb 1209 0001 60) || fail "the redirected stick never appeared on the guest's bus"
report_usb "$usb" stick
dev=$(wait_for_block sda 60) || fail "no disk for the redirected stick"
mount_vfat "$dev" /mnt/stick
report_file hello /mnt/stick/hello.txt
report_file blob /mnt/stick/data/blob.bin
echo "written by the guest through usbredir" > /mnt/stick/guest.txt
dd if=/dev/zero of=/mnt/stick/big.bin bs=4096 count=64 2>/dev/null
sync
umount /mnt/stick
report unmounted yes
"""


@pytest.mark.system
@pytest.mark.parametrize("controller", list(CONTROLLERS))
def test_guest_mounts_stick_served_by_serve_usb(
    controller: str, guest_image: GuestImage, fat_tools: None, tmp_path: Path
) -> None:
    hello = f"hello from redirgate via {controller}\n".encode()
    blob = bytes(range(256)) * 300  # 76 KiB: several bulk transfers
    image = make_fat_image(tmp_path / "stick.img", {"hello.txt": hello, "data/blob.bin": blob})
    argv = ["client", "serve-usb", "--listen", "127.0.0.1:0", f"virtual:storage:{image}"]
    with running(argv, tmp_path / "serve-usb.log") as service:
        result = run_guest(STICK_SCRIPT, usb_redir_args(controller, service.port), BOOT_TIMEOUT_S, guest=guest_image)
        log = service.log()
    assert result.rc == 0, (
        f"guest script failed: {result.results}\n--- serve-usb log:\n{log}\n--- console:\n{result.console[-3000:]}"
    )
    assert result.results["stick.idVendor"] == "1209"
    assert result.results["stick.product"] == "Virtual Flash Drive"
    assert result.results["stick.speed"] == SYSFS_SPEED[(controller, "high")]
    assert result.files["hello"] == hello
    assert result.files["blob"] == blob
    assert result.results["unmounted"] == "yes"
    assert read_fat_file(image, "guest.txt") == b"written by the guest through usbredir\n"
    assert read_fat_file(image, "big.bin") == bytes(4096 * 64)
    assert "big.bin" in list_fat_files(image)
    assert "guest 'qemu usb-redir guest" in log


#: Safety nets, not budgets: the guest's read of the typed line and the test's wait for the guest.
#: A TCG guest starved by a loaded machine (two CPU hogs beside the suite) once took longer than
#: the 60 s these were; on a quiet machine the line arrives within a second or two.
TYPED_NET_S = 240

KEYBOARD_SCRIPT = r"""
usb=$(wait_for_usb 1209 0002 60) || fail "the redirected keyboard never appeared"
report_usb "$usb" kbd
wait_for_path /dev/input/event0 30 || fail "no input device"
# tty1 is open (its line discipline buffers what is typed) before the host is
# told to type: keys that reach a VT nobody has open are lost
exec 3</dev/tty1 || fail "cannot open tty1"
log keyboard-ready
read -r -t {typed_s} line <&3 || fail "nothing typed on tty1"
report typed "$line"
"""


@pytest.mark.trio_timeout(BOOT_TIMEOUT_S + TYPED_NET_S + 60)
@pytest.mark.system
@pytest.mark.parametrize("controller", list(CONTROLLERS))
async def test_guest_receives_text_typed_by_redirected_keyboard(
    controller: str, guest_image: GuestImage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    keyboard = KeyboardDevice()
    backend = VirtualBackend([keyboard])
    source = SelectorSource(parse_selector("virtual:keyboard"), backend=backend)
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_listen, "127.0.0.1", 0, source)
            port = listeners[0].socket.getsockname()[1]
            script = KEYBOARD_SCRIPT.replace("{typed_s}", str(TYPED_NET_S))
            with start_guest(script, usb_redir_args(controller, port), guest=guest_image) as guest:
                await guest.wait_for_console_async("@@LOG keyboard-ready", BOOT_TIMEOUT_S)
                keyboard.type_text("Hello redirgate 42\n")
                result = await guest.wait_async(TYPED_NET_S + 30)
            nursery.cancel_scope.cancel()
        # what the guest did not take is still queued in the emulated keyboard
        left = f"{keyboard.pending_reports} key report(s) still queued in the device"
        assert result.rc == 0, f"{result.results}; {left}\n{result.console[-3000:]}"
        assert result.results["kbd.speed"] == SYSFS_SPEED[(controller, "full")]
        assert result.results["typed"] == "Hello redirgate 42"
    finally:
        backend.close()


@pytest.mark.system
def test_serve_usb_connect_dials_a_listening_qemu(guest_image: GuestImage, fat_tools: None, tmp_path: Path) -> None:
    """`serve-usb --connect` (usbredirect --to): QEMU's chardev listens
    (server=on,wait=off) and our host dials it, retrying until it is there."""
    import socket
    import subprocess
    import sys

    from tests.support.controllers import BUS
    from tests.support.services import stop

    hello = b"dialled out to a listening QEMU\n"
    image = make_fat_image(tmp_path / "stick.img", {"hello.txt": hello})
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    # one option and its value per line (the formatter would split each pair)
    # fmt: off
    qemu_args = [
        *CONTROLLERS["xhci"],
        "-chardev", f"socket,id=redir0,host=127.0.0.1,port={port},server=on,wait=off",
        "-device", f"usb-redir,chardev=redir0,bus={BUS['xhci']}",
    ]
    # fmt: on
    script = r"""
usb=$(wait_for_usb 1209 0001 60) || fail "no redirected stick"
dev=$(wait_for_block sda 60) || fail "no disk"
mount_vfat "$dev" /mnt/stick
report_file hello /mnt/stick/hello.txt
umount /mnt/stick
"""
    log_path = tmp_path / "serve-usb.log"
    with open(log_path, "w") as log_file:
        # started before QEMU: it retries until QEMU's port is there
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "redirgate.cli",
                "-v",
                "client",
                "serve-usb",
                "--connect",
                f"127.0.0.1:{port}",
                f"virtual:storage:{image}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        result = run_guest(script, qemu_args, BOOT_TIMEOUT_S, guest=guest_image)
    finally:
        stop(process)  # type: ignore[arg-type]  # started before the try
    assert result.rc == 0, f"{result.results}\n{log_path.read_text()}\n{result.console[-2000:]}"
    assert result.files["hello"] == hello
    assert f"connected to usbredir guest at 127.0.0.1:{port}" in log_path.read_text()
