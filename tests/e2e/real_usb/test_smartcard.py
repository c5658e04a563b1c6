"""QEMU's usb-ccid reader with an emulated card (ccid-card-emulated) through `client run` + `gateway run`:
the VM's pcsc-lite (Debian pcscd + libccid) sees the reader and the card's ATR, and a command/response
exchange (scriptor: a SELECT of the card's PKI applet) works."""

from __future__ import annotations

import re

import pytest

from tests.support.thinclient import QEMU_IDS, wait_usb_script
from tests.support.usblab import UsbLab

#: SELECT the CAC PKI applet (AID A0 00 00 00 79 01 00), which libcacard's emulated card has.
SELECT_PKI = "00 A4 04 00 07 A0 00 00 00 79 01 00"

VM_SCRIPT = (
    "set -e\n"
    + wait_usb_script(*QEMU_IDS["usb-ccid"])
    + "pcscd\n"  # daemonizes; found and stopped through its pid file
    + "trap 'kill $(cat /run/pcscd/pcscd.pid) 2>/dev/null || true' EXIT\n"
    + "until pcsc_scan -r 2>/dev/null | grep -q '^ *0:'; do sleep 0.5; done\n"
    + "pcsc_scan -r\n"
    + "echo ---\n"
    + "until pcsc_scan -c -n 2>/dev/null | grep -q 'ATR'; do sleep 0.5; done\n"
    + "pcsc_scan -c -n\n"
    + "echo ---\n"
    + f"echo '{SELECT_PKI}' | scriptor\n"
)


@pytest.mark.system
def test_pcsc_in_the_vm_sees_reader_card_and_answers(usb_lab: UsbLab) -> None:
    redir = usb_lab.vm.attach(usb_lab.route("ccid"))
    try:
        output = usb_lab.vm.run(VM_SCRIPT)
    finally:
        usb_lab.vm.detach(redir)
    readers, cards, exchange = output.split("---\n")
    assert re.search(r"0: .*", readers), output
    atr = re.search(r"ATR:?\s*((?:[0-9A-F]{2} ?)+)", cards)
    assert atr is not None and atr.group(1).startswith("3B"), output  # direct convention TS
    # scriptor echoes the command (">") and prints the card's answer ("<") ending in its status word:
    # 90 00 (done) or, under T=0, 61 XX (done, XX bytes of answer waiting for a GET RESPONSE)
    answer = re.search(r"^<\s*((?:[0-9A-F]{2} ?)+)", exchange, re.MULTILINE)
    assert answer is not None, output
    status_word = answer.group(1).split()[-2:]
    assert status_word[0] in {"90", "61"}, output
