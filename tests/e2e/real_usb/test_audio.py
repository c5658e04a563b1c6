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

import struct

import pytest

from tests.support.thinclient import QEMU_IDS, wait_usb_script
from tests.support.usblab import UsbLab

TONE_S = 4
RATE = 48000
AMPLITUDE = 12000

#: The VM: a 1 kHz stereo S16LE tone written as a WAV file, played with aplay on the redirected card.
VM_SCRIPT = (
    "set -e\n"
    + wait_usb_script(*QEMU_IDS["usb-audio"])
    + "until grep -q 'QEMU USB Audio' /proc/asound/cards; do sleep 0.1; done\n"
    + "card=$(grep 'QEMU USB Audio' /proc/asound/cards | head -1 | awk '{{print $1}}')\n"
    + "python3 -c 'import math, struct, wave, sys\n"
    'w = wave.open(sys.argv[1], "wb"); w.setnchannels(2); w.setsampwidth(2); w.setframerate({rate})\n'
    'w.writeframes(b"".join(struct.pack("<hh", v, v) for v in '
    "(int({amplitude} * math.sin(2 * math.pi * 1000 * i / {rate})) for i in range({rate} * {seconds}))))' /tmp/tone.wav\n"
    + "aplay -q -D plughw:$card,0 /tmp/tone.wav\n"
)


def _iso_out_to_the_device(pcap: bytes, start: int) -> tuple[int, list[int]]:
    """In a usbmon-format pcap (QEMU's pcap=), from byte `start`: how many iso OUT transfers to endpoint 1
    completed, and the left-channel samples (S16LE stereo) of every one submitted with data."""
    pos, completed, left = max(start, 24), 0, []
    while pos + 16 + 64 <= len(pcap):
        incl_len = struct.unpack_from("<I", pcap, pos + 8)[0]
        kind, xfer_type, epnum = pcap[pos + 16 + 8], pcap[pos + 16 + 9], pcap[pos + 16 + 10]
        if xfer_type == 0 and epnum == 0x01:
            if kind == ord("C"):
                completed += 1
            elif kind == ord("S"):
                payload = pcap[pos + 16 + 64 : pos + 16 + incl_len]
                left += [v for (v, _right) in struct.iter_unpack("<hh", payload[: len(payload) // 4 * 4])]
        pos += 16 + incl_len
    return completed, left


@pytest.mark.system
def test_tone_played_in_the_vm_reaches_the_device(usb_lab: UsbLab, record_property: pytest.RecordProperty) -> None:
    pcap = usb_lab.share / "audio.pcap"
    pcap_start = pcap.stat().st_size
    redir = usb_lab.vm.attach(usb_lab.route("audio"))
    try:
        usb_lab.vm.run(VM_SCRIPT.format(rate=RATE, seconds=TONE_S, amplitude=AMPLITUDE))
    finally:
        usb_lab.vm.detach(redir)
    # QEMU's pcap writer buffers: the detach (an unplug, more packets) pushes the tone's out
    completed, left = _iso_out_to_the_device(pcap.read_bytes(), pcap_start)
    loud = sum(1 for v in left if v)
    record_property("iso_out_completed", completed)
    record_property("iso_out_expected", TONE_S * 1000)
    record_property("samples_with_sound", loud)
    assert completed > 0 and loud > 0, f"no sound reached the device: {completed} iso OUT packets\n{usb_lab.logs()}"
    peak = max(abs(v) for v in left)
    assert 1000 <= peak <= AMPLITUDE, peak  # the VM's tone, not noise
