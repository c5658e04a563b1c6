"""Proves the real-guest harness: a Debian kernel under QEMU TCG runs our scripts.

Boots the guest with QEMU's own emulated USB mass storage behind xHCI, EHCI
(with UHCI companions) and UHCI, a second serial port wired to a socket the
test holds, and an LPT captured to a file; checks that script status,
timeouts, and the PVH and bzImage boot paths behave.  Nothing here uses
redirgate itself: these tests only make the harness trustworthy for the
end-to-end tests that do.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.support.guest import (
    GuestBuildError,
    GuestImage,
    build_guest,
    extract_pvh_vmlinux,
    list_fat_files,
    make_fat_image,
    newc_archive,
    read_fat_file,
    script_archive,
)
from tests.support.qemu import (
    GuestCrashed,
    GuestScriptFailed,
    GuestTimeout,
    parse_console,
    run_guest,
    start_guest,
)
from tests.support.system import require_system

BOOT_TIMEOUT_S = 90.0

# QEMU's usb-storage: vendor 46f4, product 0001 (hw/usb/dev-storage.c).
QEMU_STORAGE_VID, QEMU_STORAGE_PID = "46f4", "0001"

# one option and its value per line (the formatter would split each pair)
# fmt: off
CONTROLLERS: dict[str, tuple[list[str], str]] = {
    # name: (devices up to the usb-storage's bus, expected sysfs speed in Mb/s)
    "xhci": (["-device", "qemu-xhci,id=xhci"], "5000"),
    "ehci+uhci-companions": (
        [
            "-device", "ich9-usb-ehci1,id=ehci,addr=1d.7,multifunction=on",
            "-device", "ich9-usb-uhci1,masterbus=ehci.0,firstport=0,addr=1d.0,multifunction=on",
            "-device", "ich9-usb-uhci2,masterbus=ehci.0,firstport=2,addr=1d.1",
            "-device", "ich9-usb-uhci3,masterbus=ehci.0,firstport=4,addr=1d.2",
        ],
        "480",
    ),
    "uhci": (["-device", "piix3-usb-uhci,id=uhci"], "12"),
}
# fmt: on
BUS = {"xhci": "xhci.0", "ehci+uhci-companions": "ehci.0", "uhci": "uhci.0"}

STORAGE_SCRIPT = r"""
dev=$(wait_for_block sda 60) || fail "no USB disk appeared"
usb=$(wait_for_usb 46f4 0001 10) || fail "no QEMU usb-storage on the bus"
report_usb "$usb" stick
mount_vfat "$dev" /mnt/stick
report_file hello /mnt/stick/hello.txt
report_file blob /mnt/stick/data/blob.bin
echo "written by the guest" > /mnt/stick/guest.txt
umount /mnt/stick
report unmounted yes
"""


@pytest.mark.system
@pytest.mark.parametrize("controller", list(CONTROLLERS))
def test_usb_storage_roundtrip(
    controller: str,
    guest_image: GuestImage,
    fat_tools: None,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    hello = f"hello through {controller}\n".encode()
    blob = bytes(range(256)) * 33
    image = make_fat_image(tmp_path / "stick.img", {"hello.txt": hello, "data/blob.bin": blob})
    devices, speed = CONTROLLERS[controller]
    # one option and its value per line (the formatter would split each pair)
    # fmt: off
    qemu_args = [
        "-drive", f"if=none,id=stick,file={image},format=raw",
        *devices,
        "-device", f"usb-storage,bus={BUS[controller]},drive=stick",
    ]
    # fmt: on

    result = run_guest(STORAGE_SCRIPT, qemu_args, BOOT_TIMEOUT_S, guest=guest_image).check()

    assert result.results["stick.idVendor"] == QEMU_STORAGE_VID
    assert result.results["stick.idProduct"] == QEMU_STORAGE_PID
    assert result.results["stick.product"] == "QEMU USB HARDDRIVE"
    assert result.results["stick.speed"] == speed  # proves which controller carried it
    assert result.files["hello"] == hello
    assert result.files["blob"] == blob
    assert result.results["unmounted"] == "yes"
    assert read_fat_file(image, "guest.txt") == b"written by the guest\n"
    assert "guest.txt" in list_fat_files(image)
    assert result.qemu_returncode == 0  # poweroff, not a kill
    record_property("script_start_s", result.script_start_s)
    record_property("wall_s", result.wall_s)


SERIAL_SCRIPT = r"""
serial_open /dev/ttyS1
serial_send "hello-from-guest"
line=$(serial_recv 60) || fail "no line from the host on ttyS1"
report got "$line"
"""


@pytest.mark.trio_timeout(2 * BOOT_TIMEOUT_S)
@pytest.mark.system
async def test_second_serial_port_both_directions(guest_image: GuestImage) -> None:
    host_got = bytearray()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    port = listener.socket.getsockname()[1]
    # one option and its value per line (the formatter would split each pair)
    # fmt: off
    qemu_args = [
        "-chardev", f"socket,id=s1,host=127.0.0.1,port={port},server=off",
        "-serial", "chardev:s1",
    ]
    # fmt: on
    async with listener:
        with start_guest(SERIAL_SCRIPT, qemu_args, guest=guest_image) as guest:

            async def talk(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                stream = await listener.accept()
                async with stream:
                    while b"\n" not in host_got:
                        data = await stream.receive_some(4096)
                        if not data:
                            return
                        host_got.extend(data)
                    await stream.send_all(b"ping-from-host\n")
                    await trio.sleep_forever()  # keep the chardev connected

            async with trio.open_nursery() as nursery:
                nursery.start_soon(talk)
                result = await guest.wait_async(BOOT_TIMEOUT_S)
                nursery.cancel_scope.cancel()
    result.check()
    assert result.results["got"] == "ping-from-host"
    assert bytes(host_got) == b"hello-from-guest\n"


@pytest.mark.system
def test_parallel_port_reaches_host_file(guest_image: GuestImage, tmp_path: Path) -> None:
    out = tmp_path / "lp.out"
    qemu_args = ["-chardev", f"file,id=lp,path={out}", "-parallel", "chardev:lp"]
    script = 'printf "to the printer\\n" > /dev/lp0\nreport lp ok\n'
    result = run_guest(script, qemu_args, BOOT_TIMEOUT_S, guest=guest_image).check()
    assert result.results["lp"] == "ok"
    assert out.read_bytes() == b"to the printer\n"


@pytest.mark.system
def test_script_status_files_and_set_e(guest_image: GuestImage) -> None:
    payload = os.urandom(3000)
    script = r"""
report_file payload /etc/payload.bin
report multi "$(printf 'a\nb')"
false
report unreachable yes
"""
    result = run_guest(script, (), BOOT_TIMEOUT_S, guest=guest_image, files={"/etc/payload.bin": payload})
    assert result.rc == 1  # set -e stopped the script at `false`
    assert "unreachable" not in result.results
    assert result.files["payload"] == payload
    assert result.results["multi"] == "a b"
    with pytest.raises(GuestScriptFailed):
        result.check()


@pytest.mark.system
def test_timeout_stops_qemu(guest_image: GuestImage) -> None:
    with start_guest("log waiting\nsleep 600\n", guest=guest_image) as guest:
        guest.wait_for_console("@@LOG waiting", BOOT_TIMEOUT_S)
        pid = guest.pid
        elapsed = time.monotonic() - guest.started_at
        with pytest.raises(GuestTimeout) as info:
            guest.wait(timeout_s=elapsed + 1.0)
        assert guest.returncode() is not None
        assert "@@LOG waiting" in info.value.console
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.system
def test_guest_lifetime_backstop(guest_image: GuestImage) -> None:
    # Nobody stops this QEMU from the host: the guest's own watchdog must.
    with start_guest("sleep 600\n", guest=guest_image, lifetime_s=3) as guest:
        with pytest.raises(GuestCrashed) as info:
            guest.wait(BOOT_TIMEOUT_S)
        assert guest.returncode() == 0  # powered off, not killed
    assert "@@DEADLINE" in info.value.console


@pytest.mark.system
@pytest.mark.parametrize("kernel_format", ["pvh-elf", "bzimage"])
def test_boot_paths(kernel_format: str, guest_image: GuestImage) -> None:
    image = build_guest(kernel_format=kernel_format)  # type: ignore[arg-type]  # a parametrized kernel format
    assert image.kernel_format == kernel_format
    result = run_guest(
        'report kver "$(uname -r)"\nreport lp "$(ls /dev/lp0)"\n',
        (),
        BOOT_TIMEOUT_S,
        guest=image,
    ).check()
    assert result.results["kver"] == image.kver
    assert result.results["lp"] == "/dev/lp0"
    # Everything listed loads except crct10dif-pclmul, which needs PCLMUL (not in TCG's CPU).
    assert all("crct10dif-pclmul" in m for m in result.module_failures), result.module_failures


# -- host-side pieces, no QEMU ------------------------------------------------


def test_cache_is_reused(guest_image: GuestImage) -> None:
    again = build_guest(memo=False)  # skip the in-process memo, hit the disk cache
    assert again.cached and again.build_s == 0.0  # nothing was built (how long the look took is the load's business)
    assert (again.key, again.kernel, again.initrd) == (guest_image.key, guest_image.kernel, guest_image.initrd)
    if again.kernel_format == "pvh-elf":
        assert again.kernel.read_bytes()[:4] == b"\x7fELF"


def test_extract_rejects_non_bzimage() -> None:
    with pytest.raises(GuestBuildError, match="setup header"):
        extract_pvh_vmlinux(b"\0" * 4096)


def test_newc_archive_reads_back_with_cpio(tmp_path: Path) -> None:
    cpio = require_system("cpio")
    base = newc_archive(
        [
            ("d", stat.S_IFDIR | 0o755, b""),
            ("d/f", stat.S_IFREG | 0o644, b"abc"),
            ("d/l", stat.S_IFLNK | 0o777, b"f"),
        ]
    )
    extra = script_archive("echo hi\n", {"/x/y.bin": b"\x00\x01"})
    for archive, names in ((base, ["d", "d/f", "d/l"]), (extra, ["test.sh", "x", "x/y.bin"])):
        listing = subprocess.run(
            [cpio, "-t", "--quiet"], input=archive, capture_output=True, timeout=30, check=True
        ).stdout.decode()
        assert listing.split() == names
    subprocess.run([cpio, "-id", "--quiet"], input=base, cwd=tmp_path, capture_output=True, timeout=30, check=True)
    assert (tmp_path / "d" / "f").read_bytes() == b"abc"
    assert os.readlink(tmp_path / "d" / "l") == "f"


def test_parse_console_tolerates_kernel_noise() -> None:
    console = (
        "[    1.0] usb 1-1: new high-speed USB device\r\n"
        "@@SCRIPT uptime=2.50\r\n"
        "@@RESULT a=1 2 3\r\n"
        "[    2.0] sd 0:0:0:0: [sda] Attached SCSI removable disk\r\n"
        "@@FILE f=aGk=\r\n"
        "@@RESULT a=4\r\n"
        "@@DONE rc=3\r\n"
    )
    parsed = parse_console(console)
    assert parsed.results == {"a": "4"}
    assert parsed.files == {"f": b"hi"}
    assert parsed.rc == 3
    assert parsed.guest_script_uptime_s == 2.5
