"""Real USB devices for the tests: a thin-client VM with Linux gadgets, and a VM side with usb-redir.

Built on the host-root guest (:mod:`redirgate.cli.guestvm.hostroot`): the
**thin client** loads ``dummy_hcd`` (two UDCs, ``dummy_udc.0`` and
``dummy_udc.1``) and makes real USB devices with configfs gadgets
(:class:`Gadget` of :class:`Function` s: mass storage on an image, loopback,
a HID keyboard, CDC-ACM, a printer, or several at once), plugged by writing
the UDC and unplugged by clearing it; its QEMU also gives it a ``qemu-xhci``
with QEMU's own USB devices (:func:`thinclient_qemu_devices`: usb-audio
writing what it plays to a WAV file, an FTDI usb-serial wired to a host
socket, a usb-ccid reader with an emulated card, a usb-hub with a keyboard
behind it, a tablet, a usb-uas disk at super speed).  To the thin client's kernel and libusb all of these
are real devices on real host controller drivers.  The **VM side** is a
second host-root guest with a ``qemu-xhci`` where usb-redir devices are
hot-added and removed through the monitor (:class:`VmSide`).

See ``/work/shared/docs/real-usb-lab-facts.md`` for what was learned
building this.  Also meant for ``bench/``: nothing here asserts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from redirgate.cli.guestvm.hostroot import HostRootGuest, start_hostroot_guest
from redirgate.cli.guestvm.image import make_fat_image

__all__ = [
    "KEY_EVENT_READER",
    "QEMU_IDS",
    "UDCS",
    "Function",
    "Gadget",
    "ThinClient",
    "VmSide",
    "acm",
    "hid_keyboard",
    "loopback",
    "make_card_db",
    "mass_storage",
    "printer",
    "start_thinclient",
    "start_vm_side",
    "thinclient_qemu_devices",
    "wait_block_script",
    "wait_usb_gone_script",
    "wait_usb_script",
]

#: Gadget functions and the thin client's own host-side drivers; no udev in
#: the guest, so nothing is loaded on demand.
THINCLIENT_MODULES = (
    "configfs",
    "libcomposite",
    "usb_f_mass_storage",
    "usb_f_ss_lb",
    "usb_f_hid",
    "usb_f_acm",
    "usb_f_printer",
    "xhci_pci",
    "usb_storage",
    "sd_mod",
    "cdc_acm",
    "usblp",
    "usbhid",
    "hid_generic",
    "ftdi_sio",
    "snd_usb_audio",
    "uas",
)
#: What the VM side needs to use the redirected devices.
VM_SIDE_MODULES = (
    "xhci_pci",
    "usb_storage",
    "sd_mod",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "usbhid",
    "hid_generic",
    "evdev",
    "cdc_acm",
    "usblp",
    "snd_usb_audio",
    "uas",
)
CONFIGFS = "/sys/kernel/config/usb_gadget"
#: The size of the disk behind the thin client's usb-uas (small: TCG moves it slowly).
UAS_IMAGE_MIB = 8
UDCS = ("dummy_udc.0", "dummy_udc.1")

#: (vendor, product) of QEMU 7.2's emulated USB devices (hw/usb/dev-*.c).
QEMU_IDS: Mapping[str, tuple[int, int]] = {
    "usb-audio": (0x46F4, 0x0002),
    "usb-serial": (0x0403, 0x6001),
    "usb-ccid": (0x08E6, 0x4433),
    "usb-hub": (0x0409, 0x55AA),
    "usb-kbd": (0x0627, 0x0001),
    "usb-tablet": (0x0627, 0x0001),
    "usb-uas": (0x46F4, 0x0003),
}

#: Where each QEMU device sits on the thin client's xHCI (its USB 2 root hub ports; usb-uas
#: attaches at super speed, so its port 6 is on the USB 3 root hub).
QEMU_PORTS: Mapping[str, str] = {
    "usb-audio": "1",
    "usb-serial": "2",
    "usb-hub": "3",
    "usb-kbd": "3.1",
    "usb-tablet": "4",
    "usb-ccid": "5",
    "usb-uas": "6",
}


# --------------------------------------------------------------------------
# Gadgets
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Function:
    """One configfs function: `kind` is its driver's name (mass_storage, Loopback, hid, acm, printer...)."""

    kind: str
    instance: str = "0"
    #: attribute path (relative to the function's folder) -> value; bytes are written exactly
    attrs: Mapping[str, str | bytes] = dataclasses.field(default_factory=dict)
    #: sub-folders to make first (e.g. "lun.0" exists already; none needed for the usual functions)
    dirs: Sequence[str] = ()

    @property
    def folder(self) -> str:
        return f"{self.kind}.{self.instance}"


@dataclasses.dataclass(frozen=True)
class Gadget:
    """A USB device made of functions: create it once, then plug/unplug it on a UDC."""

    name: str
    vendor_id: int
    product_id: int
    product: str
    functions: Sequence[Function]
    serial: str = "0001"
    manufacturer: str = "redirgate lab"
    udc: str = UDCS[0]
    #: 0 = class per interface; 0xEF/2/1 (IAD) for a composite device with an interface association
    device_class: tuple[int, int, int] = (0, 0, 0)

    @property
    def path(self) -> str:
        return f"{CONFIGFS}/{self.name}"

    @property
    def usb_id(self) -> str:
        return f"{self.vendor_id:04x}:{self.product_id:04x}"

    def create_script(self) -> str:
        """Shell that makes the gadget (removing an older one of the same name first)."""
        g = shlex.quote(self.path)
        lines = [self.remove_script(), f"mkdir -p {g}", f"cd {g}"]
        cls, sub, proto = self.device_class
        for attr, value in (
            ("idVendor", f"0x{self.vendor_id:04x}"),
            ("idProduct", f"0x{self.product_id:04x}"),
            ("bcdUSB", "0x0200"),
            ("bcdDevice", "0x0100"),
            ("bDeviceClass", f"0x{cls:02x}"),
            ("bDeviceSubClass", f"0x{sub:02x}"),
            ("bDeviceProtocol", f"0x{proto:02x}"),
        ):
            lines.append(f"echo {value} > {attr}")
        lines += ["mkdir -p strings/0x409 configs/c.1/strings/0x409"]
        for attr, value in (
            ("manufacturer", self.manufacturer),
            ("product", self.product),
            ("serialnumber", self.serial),
        ):
            lines.append(f"echo {shlex.quote(value)} > strings/0x409/{attr}")
        lines += ["echo config > configs/c.1/strings/0x409/configuration", "echo 250 > configs/c.1/MaxPower"]
        for function in self.functions:
            lines.append(f"mkdir -p functions/{function.folder}")
            for sub_dir in function.dirs:
                lines.append(f"mkdir -p functions/{function.folder}/{sub_dir}")
            for attr, value in function.attrs.items():
                target = f"functions/{function.folder}/{attr}"
                if isinstance(value, bytes):
                    octal = "".join(f"\\{b:03o}" for b in value)
                    lines.append(f"printf '{octal}' > {target}")
                else:
                    lines.append(f"echo {shlex.quote(value)} > {target}")
            lines.append(f"ln -s functions/{function.folder} configs/c.1/")
        return "\n".join(lines) + "\n"

    def plug_script(self) -> str:
        return f"echo {self.udc} > {shlex.quote(self.path)}/UDC\n"

    def unplug_script(self) -> str:
        return f"[ ! -e {shlex.quote(self.path)}/UDC ] || echo '' > {shlex.quote(self.path)}/UDC\n"

    def remove_script(self) -> str:
        """Shell that unplugs and removes the gadget if it is there (configfs wants it taken apart in order)."""
        g = shlex.quote(self.path)
        return (
            f"if [ -d {g} ]; then\n"
            f"  echo '' > {g}/UDC 2>/dev/null || true\n"
            f'  for l in {g}/configs/c.1/*.*; do [ -L "$l" ] && rm "$l"; done\n'
            f"  rmdir {g}/configs/c.1/strings/0x409 {g}/configs/c.1 2>/dev/null || true\n"
            f'  for f in {g}/functions/*; do [ -d "$f" ] && rmdir "$f"; done\n'
            f"  rmdir {g}/strings/0x409 {g}\n"
            "fi\n"
        )


def mass_storage(image: Path | str, *, removable: bool = True, read_only: bool = False) -> Function:
    """usb_f_mass_storage on an image file (the host's usb-storage sees a disk)."""
    return Function(
        "mass_storage",
        attrs={
            "lun.0/removable": "1" if removable else "0",
            "lun.0/ro": "1" if read_only else "0",
            "lun.0/file": str(image),
        },
    )


def loopback(*, buflen: int = 4096, qlen: int = 32) -> Function:
    """usb_f_ss_lb's Loopback: what the host writes to bulk OUT comes back on bulk IN, packet for packet."""
    return Function("Loopback", attrs={"bulk_buflen": str(buflen), "qlen": str(qlen)})


#: A boot keyboard's report descriptor (HID 1.11, appendix B.1), as the kernel's g_hid example has it.
KEYBOARD_REPORT_DESC = bytes.fromhex(
    "05010906a101050719e029e71500250175019508810295017508810395057501050819012905910295017503910395067508"
    "150025650507190029658100c0"
)


def hid_keyboard() -> Function:
    """usb_f_hid as a boot keyboard: 8-byte reports written to /dev/hidgN on the thin client."""
    return Function(
        "hid",
        attrs={"protocol": "1", "subclass": "1", "report_length": "8", "report_desc": KEYBOARD_REPORT_DESC},
    )


def acm(instance: str = "0") -> Function:
    """usb_f_acm: /dev/ttyGSn on the gadget side, cdc_acm's /dev/ttyACMn on the host side."""
    return Function("acm", instance)


def printer(pnp: str = "MFG:redirgate;MDL:lab printer;CMD:PS;CLS:PRINTER;") -> Function:
    """usb_f_printer: /dev/g_printerN on the gadget side, usblp's /dev/usb/lpN on the host side."""
    return Function("printer", attrs={"pnp_string": pnp, "q_len": "10"})


# --------------------------------------------------------------------------
# The thin client
# --------------------------------------------------------------------------


def thinclient_qemu_devices(share: Path, ftdi_port: int) -> list[str]:
    """QEMU arguments for the thin client's xHCI and QEMU's own USB devices on it.

    usb-audio plays into ``share/audio.wav`` and records its packets in
    ``share/audio.pcap``; the FTDI usb-serial's other end dials the host's
    127.0.0.1:`ftdi_port` (a listener the caller owns, reconnect=1).  The
    smartcard reader is hot-added after boot (:meth:`ThinClient.add_smartcard`).
    usb-uas (USB Attached SCSI, bulk streams at super speed) serves
    ``share/uas.img``, an empty FAT disk of `UAS_IMAGE_MIB` made here (a user
    copies files onto it with mtools before the thin client's drive is used).
    """
    uas_image = make_fat_image(share / "uas.img", {}, size_mib=UAS_IMAGE_MIB, label="UAS")
    p = QEMU_PORTS
    # one option and its value per line (the formatter would split each pair)
    # fmt: off
    args = [
        "-device", "qemu-xhci,id=xhci,p2=8,p3=8",
        "-audiodev", f"wav,id=snd0,path={share / 'audio.wav'},out.frequency=48000",
        "-device", f"usb-audio,audiodev=snd0,bus=xhci.0,port={p['usb-audio']},pcap={share / 'audio.pcap'}",
        "-chardev", f"socket,id=ftdi0,host=127.0.0.1,port={ftdi_port},reconnect=1",
        "-device", f"usb-serial,chardev=ftdi0,bus=xhci.0,port={p['usb-serial']}",
        "-device", f"usb-hub,bus=xhci.0,port={p['usb-hub']}",
        "-device", f"usb-kbd,bus=xhci.0,port={p['usb-kbd']}",
        "-device", f"usb-tablet,bus=xhci.0,port={p['usb-tablet']}",
        "-drive", f"if=none,id=uasdisk,format=raw,file={uas_image}",
        "-device", f"usb-uas,id=uas,bus=xhci.0,port={p['usb-uas']}",
        "-device", "scsi-hd,bus=uas.0,scsi-id=0,lun=0,drive=uasdisk",
    ]
    # fmt: on
    return args


#: The emulated card's three certificates (nicknames in the NSS database, see make_card_db).
CARD_CERTS = ("cert1", "cert2", "cert3")


def make_card_db(share: Path) -> Path:
    """An NSS database (``share/nssdb``) with three self-signed certificates for ccid-card-emulated.

    Needs ``certutil`` (Debian libnss3-tools)."""
    db = share / "nssdb"
    db.mkdir(exist_ok=True)
    noise = share / "nssdb.noise"
    noise.write_bytes(os.urandom(2048))
    try:
        subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True, capture_output=True)
        for serial, name in enumerate(CARD_CERTS, 1):
            subprocess.run(
                [
                    "certutil",
                    "-S",
                    "-d",
                    f"sql:{db}",
                    "-n",
                    name,
                    "-s",
                    f"CN=redirgate lab card {name}",
                    "-x",
                    "-t",
                    "CT,C,C",
                    "-k",
                    "rsa",
                    "-g",
                    "1024",
                    "-m",
                    str(serial),
                    "-v",
                    "120",
                    "-z",
                    str(noise),
                ],
                check=True,
                capture_output=True,
            )
    finally:
        noise.unlink()
    return db


class ThinClient:
    """The thin-client VM: gadgets, sysfs questions, the redirgate client inside it."""

    def __init__(self, guest: HostRootGuest) -> None:
        self.guest = guest
        self.plugged: dict[str, Gadget] = {}

    def run(self, script: str, timeout_s: float = 300.0) -> str:
        return self.guest.run(script, timeout_s).stdout

    def create(self, gadget: Gadget) -> None:
        self.run("set -e\n" + gadget.create_script())

    def plug(self, gadget: Gadget, *, create: bool = True, wait: bool = True) -> str:
        """Create (unless told not to) and plug the gadget; returns its sysfs name (e.g. ``3-1``) once enumerated."""
        script = "set -e\n" + (gadget.create_script() if create else "") + gadget.plug_script()
        if wait:
            script += _wait_usb_script(gadget.vendor_id, gadget.product_id, gadget.serial) + 'echo "$found"\n'
        self.plugged[gadget.name] = gadget
        return self.run(script).strip()

    @contextlib.contextmanager
    def plugged_in(self, gadget: Gadget) -> Iterator[str]:
        """The gadget created and plugged for a `with` block (its sysfs name), removed after it, also on failure."""
        name = self.plug(gadget)
        try:
            yield name
        finally:
            self.remove(gadget)

    def unplug(self, gadget: Gadget, *, wait: bool = True) -> None:
        """Clear the UDC (the host sees the device leave); waits until sysfs forgot it."""
        script = gadget.unplug_script()
        if wait:
            script += _wait_usb_gone_script(gadget.vendor_id, gadget.product_id, gadget.serial)
        self.run(script)

    def remove(self, gadget: Gadget) -> None:
        self.run(gadget.remove_script())
        self.plugged.pop(gadget.name, None)

    def remove_all(self) -> None:
        self.run(f"for g in {CONFIGFS}/*; do [ -d \"$g\" ] || continue; echo '' > $g/UDC 2>/dev/null || true; done")
        for gadget in list(self.plugged.values()):
            self.remove(gadget)

    def add_smartcard(self) -> None:
        """Hot-add QEMU's usb-ccid with a ccid-card-emulated card (certificates from :func:`make_card_db`).

        Added after boot through the monitor: given on the command line, ccid-card-emulated
        stalls the guest before its kernel prints anything (QEMU 7.2, TCG)."""
        db = make_card_db(self.guest.share)
        certs = ",".join(f"cert{i}={name}" for i, name in enumerate(CARD_CERTS, 1))
        for command in (
            f"device_add usb-ccid,bus=xhci.0,port={QEMU_PORTS['usb-ccid']},id=ccid0",
            f"device_add ccid-card-emulated,backend=certificates,db=sql:{db},{certs},id=card0",
        ):
            reply = self.guest.hmp(command)
            if reply:
                raise RuntimeError(f"{command}: {reply}")

    def drivers(self, sysfs_name: str) -> dict[str, str]:
        """Interface (e.g. ``3-1:1.0``) -> bound driver name ("" when none) of a USB device."""
        out = self.run(
            f'for i in /sys/bus/usb/devices/{sysfs_name}:*; do [ -e "$i" ] || continue; '
            'd=""; [ -e "$i/driver" ] && d=$(basename "$(readlink "$i/driver")"); echo "$(basename "$i") $d"; done'
        )
        result = {}
        for line in out.splitlines():
            name, _, driver = line.partition(" ")
            result[name] = driver.strip()
        return result

    def qemu_device_path(self, name: str) -> str:
        """The sysfs name (``B-P[.P]``) of one of QEMU's devices on the thin client's xHCI."""
        bus = self.run(
            "for d in /sys/bus/usb/devices/usb*; do "
            '[ "$(cat $d/../vendor 2>/dev/null)" = 0x1b36 ] && [ "$(cat $d/speed)" = 480 ] && cat $d/busnum; done; true'
        ).split()
        if not bus:
            raise RuntimeError("the thin client's xHCI has no USB 2 root hub in sysfs")
        return f"{bus[0]}-{QEMU_PORTS[name]}"


def _find_usb_loop(vid: int, pid: int, serial: str | None) -> str:
    check_serial = f' && [ "$(cat $d/serial 2>/dev/null)" = {shlex.quote(serial)} ]' if serial else ""
    return (
        "for d in /sys/bus/usb/devices/*; do [ -f $d/idVendor ] || continue; "
        f'[ "$(cat $d/idVendor)" = {vid:04x} ] && [ "$(cat $d/idProduct)" = {pid:04x} ]{check_serial} '
        "&& found=$(basename $d); done"
    )


def _wait_usb_script(vid: int, pid: int, serial: str | None = None) -> str:
    """Shell: wait until the device is in sysfs with its interfaces; its sysfs name is then in $found."""
    return (
        f'found=""\nwhile :; do {_find_usb_loop(vid, pid, serial)}\n'
        '  [ -n "$found" ] && [ -e "/sys/bus/usb/devices/$found:1.0" ] && break; sleep 0.1; done\n'
    )


def _wait_usb_gone_script(vid: int, pid: int, serial: str | None = None) -> str:
    return f'while :; do found=""; {_find_usb_loop(vid, pid, serial)}\n  [ -z "$found" ] && break; sleep 0.1; done\n'


def wait_usb_script(vid: int, pid: int, serial: str | None = None) -> str:
    """Shell for any host-root guest: wait for a USB device; its sysfs name is then in $found."""
    return _wait_usb_script(vid, pid, serial)


def wait_usb_gone_script(vid: int, pid: int, serial: str | None = None) -> str:
    return _wait_usb_gone_script(vid, pid, serial)


def _modprobe_setup(modules: Sequence[str], extra: str = "") -> str:
    return "".join(f"modprobe {m}\n" for m in modules) + extra


def start_thinclient(share: Path, *, ftdi_port: int, hostfwd: Sequence[int] = (), mem_mib: int = 768) -> ThinClient:
    """Boot the thin-client VM (its share is `share`) with dummy_hcd's two UDCs and QEMU's devices."""
    setup = "modprobe dummy_hcd num=2\n" + _modprobe_setup(THINCLIENT_MODULES)
    setup += "mount -t configfs none /sys/kernel/config\n"
    # libusb (Debian's is built with udev) learns of new devices only from udevd's
    # events: without it a long-running client never sees a device plugged after it started.
    setup += "/lib/systemd/systemd-udevd --daemon\n"
    guest = start_hostroot_guest(
        thinclient_qemu_devices(share, ftdi_port), hostfwd=hostfwd, setup=setup, mem_mib=mem_mib, share=share
    )
    return ThinClient(guest)


# --------------------------------------------------------------------------
# The VM side
# --------------------------------------------------------------------------


class VmSide:
    """The hypervisor's VM: usb-redir devices hot-added to its xHCI through the monitor."""

    def __init__(self, guest: HostRootGuest) -> None:
        self.guest = guest
        self._ids = itertools.count(1)

    def run(self, script: str, timeout_s: float = 300.0) -> str:
        return self.guest.run(script, timeout_s).stdout

    def attach(self, port: int, *, listen: bool = False) -> str:
        """Hot-add a usb-redir dialling 127.0.0.1:`port` (reconnect=1), or with `listen` one whose
        chardev listens there for the usbredir host to dial in; returns its device id."""
        n = next(self._ids)
        mode = "server=on,wait=off" if listen else "reconnect=1"
        reply = self.guest.hmp(f"chardev-add socket,id=redirchr{n},host=127.0.0.1,port={port},{mode}")
        if reply:
            raise RuntimeError(f"chardev-add failed: {reply}")
        reply = self.guest.hmp(f"device_add usb-redir,chardev=redirchr{n},bus=xhci.0,id=redir{n}")
        if reply:
            raise RuntimeError(f"device_add usb-redir failed: {reply}")
        return f"redir{n}"

    def detach(self, device_id: str) -> None:
        """Remove the usb-redir device and its chardev (QEMU closes the connection)."""
        self.guest.hmp(f"device_del {device_id}")
        chardev = device_id.replace("redir", "redirchr")
        # device_del completes asynchronously; the chardev can go once the device is gone.
        while re.search(rf"\b{device_id}\b", self.guest.hmp("info qtree")):
            self.guest.run("sleep 0.2")
        self.guest.hmp(f"chardev-remove {chardev}")


def start_vm_side(share: Path, *, mem_mib: int = 512) -> VmSide:
    """Boot the VM side: a host-root guest with an empty qemu-xhci and the class drivers loaded."""
    guest = start_hostroot_guest(
        ["-device", "qemu-xhci,id=xhci"],
        network=False,
        setup=_modprobe_setup(VM_SIDE_MODULES),
        mem_mib=mem_mib,
        share=share,
    )
    return VmSide(guest)


def wait_block_script(usb_var: str = "usb") -> str:
    """Shell: wait for the disk of the USB device named in $`usb_var` (sysfs name) and set $blk to /dev/sdX."""
    return (
        'blk=""\nwhile :; do\n'
        '  for b in /sys/block/sd*; do [ -e "$b" ] || continue\n'
        f'    case "$(readlink -f $b/device)" in */${usb_var}/*) [ "$(cat $b/size)" != 0 ] && blk=/dev/$(basename $b);; esac\n'
        '  done\n  [ -n "$blk" ] && break; sleep 0.1\ndone\n'
    )


#: A VM-side reader of key events (system python3, no venv): argv = USB sysfs name, flag folder, count.
#: Finds the device's evdev node, creates FLAGS/listening once it has it open, prints "code value" for
#: each EV_KEY event until it saw COUNT of them.
KEY_EVENT_READER = r"""
import glob, os, struct, sys, time
usb, flags, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
while True:
    nodes = glob.glob(f"/sys/bus/usb/devices/{usb}:1.0/*/input/input*/event*")
    if nodes:
        break
    time.sleep(0.1)  # a poll interval: no event says the kernel bound the input device (this runs in the VM)
fd = os.open("/dev/input/" + os.path.basename(nodes[0]), os.O_RDONLY)
open(flags + "/listening", "w").close()
seen = 0
while seen < count:
    _sec, _usec, etype, code, value = struct.unpack("llHHi", os.read(fd, 24))
    if etype == 1 and value in (0, 1):  # EV_KEY press/release (2 = autorepeat)
        seen += 1
        print(code, value, flush=True)
"""
