"""A real USB hub on the thin client (QEMU's usb-hub with a usb-kbd behind it).

The keyboard behind the hub is exported by its port path (`usb_ports`) and
works in the VM: keys pressed on the thin client's keyboard arrive there.
The hub itself is refused although the export policy names it: the client
says why, and a VM on the hub's route gets nothing.
"""

from __future__ import annotations

import pytest

from tests.support.thinclient import KEY_EVENT_READER, QEMU_IDS, wait_usb_script
from tests.support.usblab import HUB_CHILD_PORT, UsbLab, wait_flag, wait_for_text

#: What Linux makes of `sendkey a` then `sendkey b`: KEY_A = 30, KEY_B = 48, press then release.
EXPECTED = [(30, 1), (30, 0), (48, 1), (48, 0)]


@pytest.mark.system
def test_device_behind_a_hub_is_exported_while_the_hub_is_refused(usb_lab: UsbLab) -> None:
    # the client refuses the hub the policy allows, and says why
    wait_for_text(
        usb_lab.client_log,
        r"not exporting 0409:55aa .* at 3-3 although the export policy allows it: "
        r"it is a USB hub",
        300,
    )
    hub_redir = usb_lab.vm.attach(usb_lab.route("hub"))
    kbd_redir = usb_lab.vm.attach(usb_lab.route("hubkbd"))
    flags = usb_lab.vm.guest.share_dir("hub")
    (flags / "reader.py").write_text(KEY_EVENT_READER)
    try:
        job = usb_lab.vm.guest.start(
            "set -e\n" + wait_usb_script(*QEMU_IDS["usb-kbd"]) + f'exec python3 {flags}/reader.py "$found" {flags} 4\n'
        )
        wait_flag(flags / "listening", job, usb_lab.logs())
        usb_lab.thin.guest.hmp("sendkey a")
        usb_lab.thin.guest.hmp("sendkey b")
        result = job.wait().check()
        # the VM got the keyboard and nothing else: the hub's route holds the VM without a device
        vm_devices = usb_lab.vm.run("cat /sys/bus/usb/devices/*/idVendor")
        wait_for_text(usb_lab.gateway.log_path, r"route hub: holding hypervisor .* does not export usb:0409:55aa", 300)
    finally:
        usb_lab.vm.detach(kbd_redir)
        usb_lab.vm.detach(hub_redir)
    events = [tuple(int(n) for n in line.split()) for line in result.stdout.splitlines()]
    assert events == EXPECTED, usb_lab.logs()
    assert "0409" not in vm_devices, vm_devices
    assert f"usb-port:{HUB_CHILD_PORT}" in usb_lab.gateway.log()
