"""atheris target: the usbredir host state (redirgate.proto.usbredir.host).

The input is a script for `HostModel` (tests/support/usbredir_host_model.py):
byte 0 picks the guest's caps, then each step takes a byte (and one or two
more for its arguments): the guest's hello, plugging and unplugging the
device, control / bulk / interrupt / iso packets, cancels of earlier ids,
set/get configuration and alt setting, resets, stream starts and stops,
filters, the disconnect ack, and the adapter completing a transfer (any
status, or "no device"), an operation (success, failure, device gone) or a
stream packet.  The guest side is a real `UsbredirConnection` pair, so the
state sees parsed messages with payloads in the parser's buffer.

Nothing may escape: the model raises `ModelError` when the state breaks a
promise - a request answered twice or never, a reply the guest's parser
would refuse, a transfer cancelled that is not out, a reset or
configuration change issued while cancelled transfers are still on the
device, two operations at once, a second `device_disconnect`, a device
announced before the disconnect ack, a submitted payload that is not what
the guest sent.

Run: python fuzz/usbredir_host_fuzz.py [libFuzzer options] [corpus dirs]
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import atheris

# the model lives with the tests' helpers (shared with tests/proto/test_usbredir_host.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    from redirgate.proto.usbredir import messages as m
    from tests.support.usbredir_host_model import run_script


def TestOneInput(data: bytes) -> None:
    run_script(data)


def seed_inputs() -> dict[str, bytes]:
    """Scripts that reach the interesting states: a device announced, an
    operation out, a disconnect, a cancelled transfer (picked from seeded
    random scripts, so they stay the same)."""
    rng = random.Random(2026)
    wanted = {
        "announced": lambda sent: any(isinstance(x, m.DeviceConnect) for x in sent),
        "disconnect": lambda sent: any(isinstance(x, m.DeviceDisconnect) for x in sent),
        "cancelled": lambda sent: any(getattr(x, "status", None) == 1 and isinstance(x, m.DataMessage) for x in sent),
        "configured": lambda sent: any(isinstance(x, m.ConfigurationStatus) and x.status == 0 for x in sent),
        "alt-set": lambda sent: any(isinstance(x, m.AltSettingStatus) and x.status == 0 and x.alt for x in sent),
        "stream-data": lambda sent: any(isinstance(x, (m.IsoPacket, m.BufferedBulkPacket)) for x in sent),
    }
    seeds: dict[str, bytes] = {}
    for _ in range(5000):
        if len(seeds) == len(wanted):
            break
        script = rng.randbytes(rng.randrange(60, 400))
        sent = run_script(script).sent
        for name, test in wanted.items():
            if name not in seeds and test(sent):
                seeds[name] = script
    return seeds


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
