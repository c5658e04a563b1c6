"""atheris target: usbredir filter strings (redirgate.proto.usbredir.filter).

Input layout (every part optional; short inputs get defaults):
  byte 0      separator choice: < 0xC0 picks a known pair from SEPARATORS,
              otherwise the next two bytes are the token and rule separator
              sets themselves, like usbredir's usbredirfilterfuzz.cc;
  byte        how the text is handed over: bit 0 bytes/str;
  2 bytes     text length (little endian, clamped), then the text;
  the rest    a device for check(): class, subclass, protocol, vid, pid,
              bcd, interface count, then (class, subclass, protocol) each.

Properties: only FilterError escapes; a filter that parses re-serialises to
a string that parses to the same rules (unless a separator can occur inside a
serialised number or the two separator sets share a byte); check() never raises on parsed rules.  When
libusbredirparser is installed the target is differential: same accept/reject,
same rules, same string, same verdict for every flags combination.

Run: python fuzz/filter_fuzz.py [libFuzzer options] [corpus dirs]
     (fuzz/run.py does this with the right corpus).
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from redirgate.proto.usbredir.filter import (
        FilterError,
        FilterRule,
        check,
        parse_rules,
        rules_to_string,
    )

REPO = Path(__file__).resolve().parent.parent
SEPARATORS = [(",", "|"), (":", "|"), (",;", " \t\n"), (",", ","), (" ", "\n"), ("é,", "|ü")]
#: Characters a serialised number contains: separators from this set make the
#: serialisation ambiguous, in the reference too.  So do token and rule sets
#: that share a byte (a non-ASCII separator is several bytes, each of which
#: separates).
_NUMBER_CHARS = set("0123456789abcdefx-")


def _load_reference():  # -> RefFilter | None
    if os.environ.get("REDIRGATE_FUZZ_NO_REFERENCE") == "1":
        return None
    sys.path.insert(0, str(REPO))
    try:
        from tests.support.reffilter import RefFilter
        from tests.support.system import libusbredirparser_path
    finally:
        sys.path.remove(str(REPO))
    path = libusbredirparser_path()
    return RefFilter(path) if path else None


REFERENCE = _load_reference()


def _split(data: bytes) -> tuple[bytes, bytes, bytes, bool, bytes]:
    choice = data[0] if data else 0
    pos = 1
    if choice < 0xC0:
        tsep, rsep = (s.encode() for s in SEPARATORS[choice % len(SEPARATORS)])
    else:
        tsep, rsep = data[1:2], data[2:3]
        pos = 3
    as_bytes = bool(data[pos] & 1) if len(data) > pos else False
    pos += 1
    length = int.from_bytes(data[pos : pos + 2], "little") if len(data) >= pos + 2 else len(data)
    pos += 2
    text = data[pos : pos + length]
    return tsep, rsep, text, as_bytes, data[pos + length :]


def _device(rest: bytes) -> tuple:
    head = rest[:10].ljust(10, b"\0")
    cls, sub, proto = head[0], head[1], head[2]
    vid, pid, bcd = struct.unpack_from("<HHH", head, 3)
    count = head[9] % 40
    tail = rest[10 : 10 + 3 * count].ljust(3 * count, b"\0")
    ifaces = [tuple(tail[i : i + 3]) for i in range(0, 3 * count, 3)]
    return cls, sub, proto, ifaces, vid, pid, bcd


def _c(rule: FilterRule) -> tuple[int, int, int, int, int]:
    return (rule.device_class, rule.vendor_id, rule.product_id, rule.device_version_bcd, int(rule.allow))


def TestOneInput(data: bytes) -> None:
    tsep_b, rsep_b, text_b, as_bytes, rest = _split(data)
    if as_bytes:
        text, tsep, rsep = text_b, tsep_b, rsep_b
    else:
        text, tsep, rsep = (b.decode("utf-8", "surrogateescape") for b in (text_b, tsep_b, rsep_b))
    try:
        rules = parse_rules(text, tsep, rsep)
    except FilterError:
        rules = None

    has_nul = b"\0" in text_b + tsep_b + rsep_b
    if REFERENCE is not None and not has_nul and as_bytes:
        rc, c_rules = REFERENCE.string_to_rules(text_b, tsep_b, rsep_b)
        if (rc == 0) != (rules is not None):
            raise AssertionError(f"reference rc={rc} but we parsed {rules!r}")
        if rules is not None:
            normalised = [(a, b, c, d, int(e != 0)) for a, b, c, d, e in c_rules]
            if [_c(r) for r in rules] != normalised:
                raise AssertionError(f"rules differ: ours {rules!r}, reference {c_rules!r}")
            if tsep_b[:1].isascii() and rsep_b[:1].isascii():
                ours = rules_to_string(
                    rules, tsep_b.decode("utf-8", "surrogateescape"), rsep_b.decode("utf-8", "surrogateescape")
                ).encode()
                theirs = REFERENCE.rules_to_string(c_rules, tsep_b, rsep_b)
                if ours != theirs:
                    raise AssertionError(f"serialisation differs: {ours!r} vs {theirs!r}")
    if rules is None:
        return

    tsep_s = tsep if isinstance(tsep, str) else tsep.decode("utf-8", "surrogateescape")
    rsep_s = rsep if isinstance(rsep, str) else rsep.decode("utf-8", "surrogateescape")
    again = rules_to_string(rules, tsep_s, rsep_s)
    t_bytes = set(tsep_s.encode("utf-8", "surrogatepass"))
    r_bytes = set(rsep_s.encode("utf-8", "surrogatepass"))
    if not (set(tsep_s + rsep_s) & _NUMBER_CHARS or t_bytes & r_bytes):
        if parse_rules(again, tsep, rsep) != rules:
            raise AssertionError(f"round trip changed the rules: {again!r}")
    if parse_rules(rules_to_string(rules)) != rules:
        raise AssertionError("round trip through the wire separators changed the rules")

    device = _device(rest)
    for flags in range(4):
        verdict = check(rules, *device, flags)
        if REFERENCE is not None:
            expected = REFERENCE.check([_c(r) for r in rules], *device, flags)
            if int(verdict) != expected:
                raise AssertionError(f"check {device} flags {flags}: ours {verdict!r}, reference {expected}")


def seed_inputs() -> dict[str, bytes]:
    """Seed corpus entries, built with the real serialiser."""
    rules_sets = {
        "empty": (),
        "only-video": parse_rules("0x0e,-1,-1,-1,1|-1,-1,-1,-1,0"),
        "vendor": parse_rules("-1,0x046d,-1,-1,1"),
        "hid-keyboard": parse_rules("0x03,-1,-1,-1,1|-1,-1,-1,-1,0"),
        "version": parse_rules("-1,0x1234,0x5678,0x0110,1|-1,0x1234,0x5678,-1,0"),
    }
    keyboard = bytes([0, 0, 0]) + struct.pack("<HHH", 0x046D, 0xC31C, 0x0110) + bytes([2, 3, 1, 1, 3, 0, 0])
    webcam = (
        bytes([0xEF, 2, 1])
        + struct.pack("<HHH", 0x046D, 0x0825, 0x0010)
        + bytes([4, 0x0E, 1, 0, 0x0E, 2, 0, 1, 1, 0, 1, 2, 0])
    )
    seeds = {}
    for n, (name, rules) in enumerate(rules_sets.items()):
        sep_index = n % 3
        tsep, rsep = SEPARATORS[sep_index]
        text = rules_to_string(rules, tsep, rsep).encode()
        device = keyboard if n % 2 else webcam
        seeds[name] = bytes([sep_index, 1]) + len(text).to_bytes(2, "little") + text + device
    octal = b" 012,+0X046D,-1,0777,7"
    seeds["strtol-forms"] = bytes([0, 1]) + len(octal).to_bytes(2, "little") + octal + keyboard
    raw = b"3;-1;-1;-1;1\n8;-1;-1;-1;0"
    seeds["raw-separators"] = bytes([0xFF, ord(";"), ord("\n"), 1]) + len(raw).to_bytes(2, "little") + raw
    return seeds


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
