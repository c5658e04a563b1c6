"""QEMU's usb-audio (a UAC1 speaker: isochronous OUT, one 192-byte packet per 1 ms frame) through
`client run` + `gateway run`: a tone played in the VM arrives at the device.

Functional only (how much of it arrives is the client-speed issue's): the
thin client's QEMU records every packet the device takes (`pcap=`) and
writes what it plays to a WAV file (`-audiodev wav`); the test counts the
iso OUT packets, checks the tone is in the WAV and reports the gaps.
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


def _iso_out_packets(pcap: bytes, start: int) -> tuple[int, int]:
    """iso OUT completions to endpoint 1 in a usbmon-format pcap (QEMU's pcap=), from byte `start` of it,
    and how many of the submissions carried sound (a byte not zero)."""
    pos, count, with_sound = max(start, 24), 0, 0
    while pos + 16 + 64 <= len(pcap):
        incl_len = struct.unpack_from("<I", pcap, pos + 8)[0]
        kind, xfer_type, epnum = pcap[pos + 16 + 8], pcap[pos + 16 + 9], pcap[pos + 16 + 10]
        if xfer_type == 0 and epnum == 0x01 and kind == ord("C"):
            count += 1
        if xfer_type == 0 and epnum == 0x01 and kind == ord("S") and any(pcap[pos + 16 + 64 : pos + 16 + incl_len]):
            with_sound += 1
        pos += 16 + incl_len
    return count, with_sound


def _tone_stats(samples: bytes) -> tuple[int, int, int]:
    """(frames with sound, the loudest sample, silent gaps of 1 ms or more between the first and last sound)."""
    left = [v for (v, _right) in struct.iter_unpack("<hh", samples[: len(samples) // 4 * 4])]
    loud = [i for i, v in enumerate(left) if v != 0]
    if not loud:
        return 0, 0, 0
    gaps, run = 0, 0
    for v in left[loud[0] : loud[-1] + 1]:
        run = run + 1 if v == 0 else 0
        if run == RATE // 1000:
            gaps += 1
    return len(loud), max(abs(v) for v in left), gaps


@pytest.mark.system
def test_tone_played_in_the_vm_reaches_the_device(usb_lab: UsbLab, record_property: pytest.RecordProperty) -> None:
    wav, pcap = usb_lab.share / "audio.wav", usb_lab.share / "audio.pcap"
    wav_start, pcap_start = wav.stat().st_size, pcap.stat().st_size
    redir = usb_lab.vm.attach(usb_lab.route("audio"))
    try:
        usb_lab.vm.run(VM_SCRIPT.format(rate=RATE, seconds=TONE_S, amplitude=AMPLITUDE))
    finally:
        usb_lab.vm.detach(redir)
    # QEMU's pcap writer buffers: the detach (an unplug, more packets) pushes the tone's out
    packets, with_sound = _iso_out_packets(pcap.read_bytes(), pcap_start)
    loud, peak, gaps = _tone_stats(wav.read_bytes()[max(wav_start, 44) :])
    record_property("iso_out_packets", packets)
    record_property("iso_out_expected", TONE_S * 1000)
    record_property("wav_gaps", gaps)
    record_property("iso_out_with_sound", with_sound)
    assert packets > 0, usb_lab.logs()
    assert loud > 0, (
        f"the tone never reached the device's speaker: {packets} iso OUT packets, {with_sound} carried sound"
        f"\n{usb_lab.logs()}"
    )
    assert 1000 <= peak <= AMPLITUDE + 2, peak  # the VM's tone (at the device's volume), not noise
