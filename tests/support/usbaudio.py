"""QEMU's usb-audio in the thin-client VM (isochronous OUT): a tone the VM side plays, and what the device took.

Shared by tests/e2e/real_usb/test_audio.py and bench/real_usb.py.  The thin
client's QEMU records every packet the device takes (``pcap=``, usbmon
format); what the device took is read there, not from the WAV file QEMU
plays into (written through a stdio buffer flushed only when full or at exit,
so a short tone is not in it yet while the lab runs).
"""

from __future__ import annotations

import struct

from tests.support.thinclient import QEMU_IDS, wait_usb_script

__all__ = ["AMPLITUDE", "RATE", "iso_out_to_the_device", "tone_script"]

RATE = 48000
AMPLITUDE = 12000

#: The VM: a 1 kHz stereo S16LE tone written as a WAV file (once per boot), played with aplay on the
#: redirected card; prints "aplay T0 T1" (the VM's clock) when aplay ends.
_TONE_SCRIPT = (
    "set -e\n"
    + wait_usb_script(*QEMU_IDS["usb-audio"])
    + "until grep -q 'QEMU USB Audio' /proc/asound/cards; do sleep 0.1; done\n"
    + "card=$(grep 'QEMU USB Audio' /proc/asound/cards | head -1 | awk '{{print $1}}')\n"
    + "tone=/tmp/tone-{seconds}.wav\n"
    + "[ -e $tone ] || python3 -c 'import math, struct, wave, sys\n"
    'w = wave.open(sys.argv[1], "wb"); w.setnchannels(2); w.setsampwidth(2); w.setframerate({rate})\n'
    'w.writeframes(b"".join(struct.pack("<hh", v, v) for v in '
    "(int({amplitude} * math.sin(2 * math.pi * 1000 * i / {rate})) for i in range({rate} * {seconds}))))' $tone\n"
    + 'now="date +%s.%N"\n'
    + 't0=$($now); aplay -q -D plughw:$card,0 $tone; t1=$($now); echo "aplay $t0 $t1"\n'
)


def tone_script(seconds: int) -> str:
    """Shell for the VM side: wait for the redirected usb-audio, play a `seconds` s 1 kHz tone on it."""
    return _TONE_SCRIPT.format(rate=RATE, seconds=seconds, amplitude=AMPLITUDE)


def iso_out_to_the_device(pcap: bytes, start: int) -> tuple[int, list[int]]:
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
