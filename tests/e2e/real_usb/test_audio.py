"""QEMU's usb-audio (a UAC1 speaker: isochronous OUT, one 192-byte packet per 1 ms frame) through
`client run` + `gateway run`: a tone played in the VM arrives at the device.

Functional only (how much of it arrives is the client-speed issue's, 13):
the thin client's QEMU records every packet the device takes (`pcap=`); the
test finds the VM's tone in the payloads the device took (left channel, the
tone's amplitude: not noise, not silence) and records how many of the
expected packets arrived.  Not the WAV file QEMU plays into (`-audiodev
wav`): QEMU writes it through a stdio buffer flushed only when full or at
exit, so a short tone is not in it yet while the lab runs (seen: 3 packets
arrived, the WAV still empty).
"""

from __future__ import annotations

import pytest

from tests.support.usbaudio import AMPLITUDE, iso_out_to_the_device, tone_script
from tests.support.usblab import UsbLab, wait_for_text

TONE_S = 4
SUMMARY = (
    r"iso OUT stream on 0x01 ended: (\d+) packets from the guest, (\d+) taken by the device, \d+ failed, (\d+) dropped"
)


@pytest.mark.system
def test_tone_played_in_the_vm_reaches_the_device(usb_lab: UsbLab, record_property: pytest.RecordProperty) -> None:
    pcap = usb_lab.share / "audio.pcap"
    pcap_start = pcap.stat().st_size
    log_start = usb_lab.client_log.stat().st_size
    redir = usb_lab.vm.attach(usb_lab.route("audio"))
    try:
        # not checked: on a loaded host the VM side's aplay may end early with EIO (seen through
        # usbredirect too: its TCG vCPU starved past ALSA's wait); what reached the device is the test
        played = usb_lab.vm.guest.run(tone_script(TONE_S), check=False)
    finally:
        usb_lab.vm.detach(redir)
    # QEMU's pcap writer buffers: the detach (an unplug, more packets) pushes the tone's out
    completed, left = iso_out_to_the_device(pcap.read_bytes(), pcap_start)
    loud = sum(1 for v in left if v)
    record_property("iso_out_completed", completed)
    record_property("iso_out_expected", TONE_S * 1000)
    record_property("samples_with_sound", loud)
    assert completed > 0 and loud > 0, (
        f"no sound reached the device: {completed} iso OUT packets; aplay: {played.rc} {played.stderr}\n{usb_lab.logs()}"
    )
    peak = max(abs(v) for v in left)
    assert 1000 <= peak <= AMPLITUDE, peak  # the VM's tone, not noise
    # the client says what became of the stream's packets, drops included (never silent)
    summary = wait_for_text(usb_lab.client_log, SUMMARY, 120, start=log_start)
    record_property("iso_out_from_the_guest", int(summary.group(1)))
    record_property("iso_out_dropped", int(summary.group(3)))
    assert int(summary.group(2)) > 0, summary.group(0)
