"""Filter rules: grammar, serialisation and matching by worked example.

Tables come from the protocol reference §6.3 and from the cases usbredir's own
tests/filter.c checks, restated here.  Conformance with the C library itself
is tests/proto/test_filter_reference.py.
"""

from __future__ import annotations

import pytest

from redirgate.proto.usbredir.errors import ProtocolError
from redirgate.proto.usbredir.filter import (
    DeviceInfo,
    FilterError,
    FilterFlag,
    FilterRule,
    Verdict,
    check,
    check_device,
    parse_rules,
    rules_to_string,
    verify_rules,
)

ANY = -1


def R(cls: int, vid: int, pid: int, bcd: int, allow: bool) -> FilterRule:
    return FilterRule(cls, vid, pid, bcd, allow)


# (filter, token_sep, rule_sep, rules, serialised-with-same-separators)
VALID = [
    ("", ",", "|", (), ""),
    ("|||", ",", "|", (), ""),
    ("0x03,-1,-1,-1,0", ",", "|", (R(3, ANY, ANY, ANY, False),), "0x03,-1,-1,-1,0"),
    (
        "0x03,-1,-1,-1,0|-1,-1,-1,-1,1",
        ",",
        "|",
        (R(3, ANY, ANY, ANY, False), R(ANY, ANY, ANY, ANY, True)),
        "0x03,-1,-1,-1,0|-1,-1,-1,-1,1",
    ),
    (
        "|0x03,-1,-1,-1,0|-1,-1,-1,-1,1|",
        ",",
        "|",
        (R(3, ANY, ANY, ANY, False), R(ANY, ANY, ANY, ANY, True)),
        "0x03,-1,-1,-1,0|-1,-1,-1,-1,1",
    ),
    (
        "||||0x03,-1,-1,-1,0|||-1,-1,-1,-1,1||||",
        ",",
        "|",
        (R(3, ANY, ANY, ANY, False), R(ANY, ANY, ANY, ANY, True)),
        "0x03,-1,-1,-1,0|-1,-1,-1,-1,1",
    ),
    # Separator *sets*; the first member is what serialisation writes.
    ("0x03,-1,-1,-1,0", ",;", " \t\n", (R(3, ANY, ANY, ANY, False),), "0x03,-1,-1,-1,0"),
    ("\t 0x03,-1;-1;-1,0\n\n", ",;", " \t\n", (R(3, ANY, ANY, ANY, False),), "0x03,-1,-1,-1,0"),
    (
        "\n\t0x03;-1,-1,-1,0\n\n-1,-1,-1;-1;1",
        ",;",
        " \t\n",
        (R(3, ANY, ANY, ANY, False), R(ANY, ANY, ANY, ANY, True)),
        "0x03,-1,-1,-1,0 -1,-1,-1,-1,1",
    ),
    # §6.3 parsing table.
    ("0X0A,-1,-1,-1,1", ",", "|", (R(10, ANY, ANY, ANY, True),), "0x0a,-1,-1,-1,1"),
    ("012,-1,-1,-1,1", ",", "|", (R(10, ANY, ANY, ANY, True),), "0x0a,-1,-1,-1,1"),
    (
        "255,65535,65535,65535,0",
        ",",
        "|",
        (R(255, 0xFFFF, 0xFFFF, 0xFFFF, False),),
        "0xff,0xffff,0xffff,0xffff,0",
    ),
    ("0x08:0x0781:-1:-1:1", ":", "|", (R(8, 0x0781, ANY, ANY, True),), "0x08:0x0781:-1:-1:1"),
    # strtol details: whitespace and sign before the number, octal zero,
    # allow is any non-zero int, values are truncated to a C int.
    (" \t+3,\v-1,0,00,-7", ",", "|", (R(3, ANY, 0, 0, True),), "0x03,-1,0x0000,0x0000,1"),
    ("-0x1,0x0,0X00ff,0777,0", ",", "|", (R(ANY, 0, 0xFF, 0o777, False),), "-1,0x0000,0x00ff,0x01ff,0"),
    ("4294967299,-1,-1,-1,4294967296", ",", "|", (R(3, ANY, ANY, ANY, False),), "0x03,-1,-1,-1,0"),
    ("99999999999999999999,-1,-1,-1,1", ",", "|", (R(ANY, ANY, ANY, ANY, True),), "-1,-1,-1,-1,1"),
]


@pytest.mark.parametrize(("text", "tsep", "rsep", "rules", "serialised"), VALID)
def test_parse_valid(text: str, tsep: str, rsep: str, rules: tuple, serialised: str) -> None:
    parsed = parse_rules(text, tsep, rsep)
    assert parsed == rules
    assert rules_to_string(parsed, tsep, rsep) == serialised
    assert parse_rules(serialised, tsep, rsep) == rules


def test_qemu_separators_serialise_for_the_wire() -> None:
    rules = parse_rules("0x08:0x0781:-1:-1:1", ":", "|")
    assert rules_to_string(rules) == "0x08,0x0781,-1,-1,1"


def test_bytes_input_is_accepted() -> None:
    assert parse_rules(b"3,-1,-1,-1,1", b",", b"|") == (R(3, ANY, ANY, ANY, True),)


# (filter, token_sep, rule_sep, failing rule index or None, words in the reason)
INVALID = [
    ("0x100,-1,-1,-1,0", ",", "|", 0, "class 256"),
    ("-2,-1,-1,-1,0", ",", "|", 0, "class -2"),
    ("0x03,,0x10000-1,-1,0", ",", "|", 0, "not a number"),
    ("0x03,-2,-1,-1,0", ",", "|", 0, "vendor id -2"),
    ("0x03,-1,0x10000,-1,0", ",", "|", 0, "product id 65536"),
    ("0x03,-1,-2,-1,0", ",", "|", 0, "product id -2"),
    ("0x03,-1,-1,0x10000,0", ",", "|", 0, "version 65536"),
    ("0x03,-1,-1,-2,0", ",", "|", 0, "version -2"),
    ("0x03,-1,-1,-1,0,1", ",", "|", 0, "6 fields"),
    ("0x03,-1,-1,-1", ",", "|", 0, "4 fields"),
    ("0x03,-1,-1,,-1", ",", "|", 0, "4 fields"),
    ("0x03,-1,-1,a,-1", ",", "|", 0, "'a' is not a number"),
    ("0x03,-1,-1,#,-1", ",", "|", 0, "'#' is not a number"),
    ("0x03,-1,-1, ,-1", ",", "|", 0, "' ' is not a number"),
    ("0x03;-1;-1;-1;0", ",", "|", 0, "not a number"),
    ("0x03,-1,-1,-1,0;-1,-1,-1,-1,1", ",", "|", 0, "not a number"),
    ("0x03,-1,-1,-1,0|3|-1,-1,-1,-1,1", ",", "|", 1, "1 fields"),
    ("0x03,-1,-1,-1,0", "", "|", None, "empty token separator"),
    ("0x03,-1,-1,-1,0", ",", "", None, "empty rule separator"),
    # §6.3
    ("08,-1,-1,-1,1", ",", "|", 0, "'08'"),
    ("256,-1,-1,-1,0", ",", "|", 0, "class 256"),
    ("3,-1,-1,-1", ",", "|", 0, "4 fields"),
    ("  |  ", ",", "|", 0, "not a number"),
    ("0x08:0x0781:-1:-1:1", ",", "|", 0, "not a number"),
    # strtol corners: a bare prefix, a sign alone, trailing blank, sign twice.
    ("0x,-1,-1,-1,1", ",", "|", 0, "'0x'"),
    ("-,-1,-1,-1,1", ",", "|", 0, "'-'"),
    ("3 ,-1,-1,-1,1", ",", "|", 0, "'3 '"),
    ("+-3,-1,-1,-1,1", ",", "|", 0, "'+-3'"),
    ("- 3,-1,-1,-1,1", ",", "|", 0, "'- 3'"),
    ("0x1g,-1,-1,-1,1", ",", "|", 0, "'0x1g'"),
    ("3,-1,-1,-1,1\0|4,-1,-1,-1,1", ",", "|", None, "NUL"),
]


@pytest.mark.parametrize(("text", "tsep", "rsep", "index", "reason"), INVALID)
def test_parse_invalid(text: str, tsep: str, rsep: str, index: int | None, reason: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_rules(text, tsep, rsep)
    assert info.value.rule_index == index
    assert reason in str(info.value)
    assert isinstance(info.value, ProtocolError)


def test_error_names_rule_text() -> None:
    with pytest.raises(FilterError) as info:
        parse_rules("3,-1,-1,-1,1|7,8")
    assert info.value.rule_text == "7,8"
    assert "filter rule 2 '7,8'" in str(info.value)


@pytest.mark.parametrize(
    "rule",
    [
        R(256, ANY, ANY, ANY, True),
        R(-2, ANY, ANY, ANY, True),
        R(ANY, 0x10000, ANY, ANY, True),
        R(ANY, ANY, -5, ANY, True),
        R(ANY, ANY, ANY, 70000, False),
    ],
)
def test_out_of_range_rules(rule: FilterRule) -> None:
    with pytest.raises(FilterError) as info:
        verify_rules([R(3, ANY, ANY, ANY, True), rule])
    assert info.value.rule_index == 1
    with pytest.raises(FilterError):
        rules_to_string([rule])
    assert check([rule], 3, 0, 0, [], 1, 2, 3) is Verdict.INVALID


def test_rule_fields_are_typed() -> None:
    with pytest.raises(TypeError):
        FilterRule("3", ANY, ANY, ANY, True)  # type: ignore[arg-type]  # wrong type on purpose
    with pytest.raises(TypeError):
        FilterRule(3, ANY, ANY, ANY, 1)  # type: ignore[arg-type]  # wrong type on purpose


def test_rules_to_string_needs_separators() -> None:
    with pytest.raises(FilterError):
        rules_to_string([], "", "|")
    with pytest.raises(FilterError):
        rules_to_string([], ",", "")


# Matching ------------------------------------------------------------------

ONLY_VIDEO = parse_rules("0x0e,-1,-1,-1,1|-1,-1,-1,-1,0")
VIDEO_AUDIO = parse_rules("0x0e,-1,-1,-1,1|0x01,-1,-1,-1,1|-1,-1,-1,-1,0")
LOGITECH = parse_rules("-1,0x046d,-1,-1,1")
ONLY_HID = parse_rules("0x03,-1,-1,-1,1|-1,-1,-1,-1,0")
BY_VERSION = parse_rules("-1,0x1234,0x5678,0x0110,1|-1,0x1234,0x5678,-1,0")

WEBCAM_IFACES = ((0x0E, 1, 0), (0x0E, 2, 0), (0x01, 1, 0), (0x01, 2, 0))
MOUSE_IFACES = ((0x03, 1, 2),)
KEYBOARD_IFACES = ((0x03, 1, 1), (0x03, 0, 0))

# (rules, class, interfaces, vid, pid, bcd, flags, verdict)
CHECKS = [
    # §6.3 example 1: device pass skipped for 0xEF, audio hits the catch-all.
    (ONLY_VIDEO, 0xEF, WEBCAM_IFACES, 0x046D, 0x0825, 0x0010, 0, Verdict.BLOCKED),
    (VIDEO_AUDIO, 0xEF, WEBCAM_IFACES, 0x046D, 0x0825, 0x0010, 0, Verdict.ALLOWED),
    # Example 2: vendor rule only.
    (LOGITECH, 0x00, MOUSE_IFACES, 0x046D, 0xC077, 0x7200, 0, Verdict.ALLOWED),
    (LOGITECH, 0x00, MOUSE_IFACES, 0x1234, 0xC077, 0x7200, 0, Verdict.NO_MATCH),
    (LOGITECH, 0x00, MOUSE_IFACES, 0x1234, 0xC077, 0x7200, FilterFlag.DEFAULT_ALLOW, Verdict.ALLOWED),
    # Example 3: the non-boot HID interface is skipped; class 0xFF is checked.
    (ONLY_HID, 0x00, KEYBOARD_IFACES, 1, 2, 3, 0, Verdict.ALLOWED),
    (ONLY_HID, 0xFF, ((0x03, 1, 1),), 1, 2, 3, 0, Verdict.BLOCKED),
    # Example 4: version match.
    (BY_VERSION, 0, ((0xFF, 0, 0),), 0x1234, 0x5678, 0x0110, 0, Verdict.ALLOWED),
    (BY_VERSION, 0, ((0xFF, 0, 0),), 0x1234, 0x5678, 0x0120, 0, Verdict.BLOCKED),
    (BY_VERSION, 0, ((0xFF, 0, 0),), 0x1234, 0x9999, 0x0110, 0, Verdict.NO_MATCH),
    # No interfaces and class 0: no pass runs, even an empty filter allows.
    ((), 0x00, (), 1, 2, 3, 0, Verdict.ALLOWED),
    ((), 0xEF, (), 1, 2, 3, 0, Verdict.ALLOWED),
    ((), 0x09, (), 1, 2, 3, 0, Verdict.NO_MATCH),
    ((), 0x09, (), 1, 2, 3, FilterFlag.DEFAULT_ALLOW, Verdict.ALLOWED),
    # Non-boot HID skipping: only with more than one interface, and not with
    # the flag; if every interface is skipped they are all checked after all.
    (parse_rules("0x03,-1,-1,-1,0|-1,-1,-1,-1,1"), 0, ((3, 0, 0), (8, 6, 80)), 1, 2, 3, 0, Verdict.ALLOWED),
    (
        parse_rules("0x03,-1,-1,-1,0|-1,-1,-1,-1,1"),
        0,
        ((3, 0, 0), (8, 6, 80)),
        1,
        2,
        3,
        FilterFlag.DONT_SKIP_NON_BOOT_HID,
        Verdict.BLOCKED,
    ),
    (parse_rules("0x03,-1,-1,-1,0|-1,-1,-1,-1,1"), 0, ((3, 0, 0),), 1, 2, 3, 0, Verdict.BLOCKED),
    (parse_rules("0x03,-1,-1,-1,0|-1,-1,-1,-1,1"), 0, ((3, 0, 0), (3, 0, 0)), 1, 2, 3, 0, Verdict.BLOCKED),
    (parse_rules("0x03,-1,-1,-1,1"), 0, ((3, 0, 0), (3, 0, 0)), 1, 2, 3, 0, Verdict.ALLOWED),
    # Only boot-protocol HID subclass/protocol (0/0) is skipped.
    (parse_rules("0x03,-1,-1,-1,0|-1,-1,-1,-1,1"), 0, ((3, 0, 1), (8, 6, 80)), 1, 2, 3, 0, Verdict.BLOCKED),
    # The first matching rule decides, in order.
    (parse_rules("-1,-1,-1,-1,1|0x08,-1,-1,-1,0"), 0x08, (), 1, 2, 3, 0, Verdict.ALLOWED),
    (parse_rules("0x08,-1,-1,-1,0|-1,-1,-1,-1,1"), 0x08, (), 1, 2, 3, 0, Verdict.BLOCKED),
    # A device-pass failure ends the check before any interface.
    (parse_rules("0x08,-1,-1,-1,1"), 0xFF, ((8, 6, 80),), 1, 2, 3, 0, Verdict.NO_MATCH),
]


@pytest.mark.parametrize(("rules", "cls", "ifaces", "vid", "pid", "bcd", "flags", "verdict"), CHECKS)
def test_check(rules, cls, ifaces, vid, pid, bcd, flags, verdict) -> None:  # type: ignore[no-untyped-def]  # the parametrize table's columns
    assert check(rules, cls, 0, 0, ifaces, vid, pid, bcd, flags) is verdict
    device = DeviceInfo(cls, 0, 0, ifaces, vid, pid, bcd)
    assert check_device(rules, device, flags) is verdict


def test_verdict_numbers_are_the_c_return_codes() -> None:
    assert [int(v) for v in Verdict] == [0, -1, -2, -22]
    assert Verdict.ALLOWED.allowed and not Verdict.NO_MATCH.allowed


@pytest.mark.parametrize(
    "device",
    [
        dict(device_class=256),
        dict(vendor_id=-1),
        dict(product_id=0x10000),
        dict(device_version_bcd=1.5),
        dict(interfaces=((3, 0),)),
        dict(interfaces=((3, 0, 300),)),
    ],
)
def test_device_values_out_of_range(device: dict) -> None:
    fields = dict(
        device_class=0,
        device_subclass=0,
        device_protocol=0,
        interfaces=(),
        vendor_id=1,
        product_id=2,
        device_version_bcd=3,
    )
    fields.update(device)
    with pytest.raises(FilterError):
        DeviceInfo(**fields)
