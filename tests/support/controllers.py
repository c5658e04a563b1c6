"""QEMU USB controllers the end-to-end tests run behind, and their buses.

EHCI gets UHCI companions so a full-speed device can attach to it (an EHCI
without companions refuses it: "speed mismatch").
"""

from __future__ import annotations

# one option and its value per line (the formatter would split each pair)
# fmt: off
CONTROLLERS: dict[str, list[str]] = {
    "xhci": ["-device", "qemu-xhci,id=xhci"],
    "ehci+uhci-companions": [
        "-device", "ich9-usb-ehci1,id=ehci,addr=1d.7,multifunction=on",
        "-device", "ich9-usb-uhci1,masterbus=ehci.0,firstport=0,addr=1d.0,multifunction=on",
        "-device", "ich9-usb-uhci2,masterbus=ehci.0,firstport=2,addr=1d.1",
        "-device", "ich9-usb-uhci3,masterbus=ehci.0,firstport=4,addr=1d.2",
    ],
    "uhci": ["-device", "piix3-usb-uhci,id=uhci"],
}
# fmt: on
BUS = {"xhci": "xhci.0", "ehci+uhci-companions": "ehci.0", "uhci": "uhci.0"}

#: sysfs `speed` (Mb/s) a device of each speed shows behind each controller
SYSFS_SPEED = {
    ("xhci", "high"): "480",
    ("xhci", "full"): "12",
    ("ehci+uhci-companions", "high"): "480",
    ("ehci+uhci-companions", "full"): "12",
    ("uhci", "high"): "12",  # QEMU downgrades a high-speed device without iso
    ("uhci", "full"): "12",
}


def usb_redir_args(controller: str, port: int, chardev_id: str = "redir0") -> list[str]:
    """QEMU arguments: the controller plus a usb-redir that dials 127.0.0.1:port."""
    # one option and its value per line (the formatter would split each pair)
    # fmt: off
    return [
        *CONTROLLERS[controller],
        "-chardev", f"socket,id={chardev_id},host=127.0.0.1,port={port},reconnect=1",
        "-device", f"usb-redir,chardev={chardev_id},bus={BUS[controller]}",
    ]
    # fmt: on
