"""Filter conformance against the real libusbredirparser, through ctypes.

For hypothesis-generated filter strings (well-formed and malformed, with the
separator sets used in practice and random ones) our parser must accept
exactly what usbredirfilter_string_to_rules accepts, produce the same rules
and the same re-serialised string; for generated devices and rule lists
`check` must give the same verdict as usbredirfilter_check for every flags
combination.  The library is required in CI (REDIRGATE_REQUIRE_SYSTEM=1).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redirgate.proto.usbredir.filter import (
    FilterError,
    FilterRule,
    check,
    parse_rules,
    rules_to_string,
    verify_rules,
)
from tests.support.reffilter import CRule, RefFilter, reference_filter

pytestmark = pytest.mark.system

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def ref() -> RefFilter:
    return reference_filter()


def _c(rule: FilterRule) -> CRule:
    return (rule.device_class, rule.vendor_id, rule.product_id, rule.device_version_bcd, int(rule.allow))


def _compare_parse(ref: RefFilter, text: str, tsep: str, rsep: str) -> None:
    raw, rawt, rawr = (s.encode("utf-8", "surrogatepass") for s in (text, tsep, rsep))
    rc, c_rules = ref.string_to_rules(raw, rawt, rawr)
    try:
        ours = parse_rules(text, tsep, rsep)
    except FilterError:
        assert rc != 0, f"C accepted {text!r} as {c_rules}"
        return
    assert rc == 0, f"C rejected {text!r} ({rc}); we parsed {ours}"
    assert [_c(r) for r in ours] == [(a, b, c, d, int(e != 0)) for a, b, c, d, e in c_rules]
    if tsep[0].isascii() and rsep[0].isascii():
        c_string = ref.rules_to_string(c_rules, rawt, rawr)
        assert c_string is not None
        assert rules_to_string(ours, tsep, rsep).encode() == c_string
    # Round trip with the same separators -- unless the separators can occur
    # inside a serialised number ("0x", hex digits, "-1"); the reference
    # cannot read back its own output then either.
    if not set(tsep + rsep) & set("0123456789abcdefx-"):
        again = rules_to_string(ours, tsep, rsep)
        assert parse_rules(again, tsep, rsep) == ours


# Hand-picked strings, each compared with the C library.
EXAMPLES = [
    ("", ",", "|"),
    ("|||", ",", "|"),
    ("0X0A,-1,-1,-1,1", ",", "|"),
    ("012,-1,-1,-1,1", ",", "|"),
    ("08,-1,-1,-1,1", ",", "|"),
    ("255,65535,65535,65535,0", ",", "|"),
    ("256,-1,-1,-1,0", ",", "|"),
    ("3,-1,-1,-1", ",", "|"),
    ("  |  ", ",", "|"),
    ("0x08:0x0781:-1:-1:1", ":", "|"),
    ("0x08:0x0781:-1:-1:1", ",", "|"),
    ("\n\t0x03;-1,-1,-1,0\n\n-1,-1,-1;-1;1", ",;", " \t\n"),
    ("0x03,,0x10000-1,-1,0", ",", "|"),
    ("0x,-1,-1,-1,1", ",", "|"),
    ("0x1g,-1,-1,-1,1", ",", "|"),
    (" \t+3,\v-1,0,00,-7", ",", "|"),
    ("-0x1,0x0,0X00ff,0777,0", ",", "|"),
    ("4294967299,-1,-1,-1,4294967296", ",", "|"),
    ("99999999999999999999,-1,-1,-1,1", ",", "|"),
    ("-99999999999999999999,-1,-1,-1,1", ",", "|"),
    ("-9223372036854775808,-1,-1,-1,1", ",", "|"),
    ("4294967295,-1,-1,-1,1", ",", "|"),
    ("-4294967297,-1,-1,-1,1", ",", "|"),
    ("1" * 5000 + ",-1,-1,-1,1", ",", "|"),
    ("3,-1,-1,-1,1", ",", ","),
    ("3,-1,-1,-1,1", "3", "|"),
    ("3é-1é-1é-1é1", "é", "|"),
    ("3\u00a0,-1,-1,-1,1", ",", "|"),
    ("\u00a03,-1,-1,-1,1", ",", "|"),
    ("3,-1,-1,-1,1\x1c", ",", "|"),
    ("0b1,-1,-1,-1,1", ",", "|"),
    ("1e3,-1,-1,-1,1", ",", "|"),
]


@pytest.mark.parametrize(("text", "tsep", "rsep"), EXAMPLES)
def test_examples_match_reference(ref: RefFilter, text: str, tsep: str, rsep: str) -> None:
    _compare_parse(ref, text, tsep, rsep)


# Generated filter strings ------------------------------------------------------

SEPARATOR_SETS = [(",", "|"), (":", "|"), (",;", " \t\n"), (",", ","), ("|", ","), (" ", "\n")]
_SEP_ALPHABET = ",|:; \t\n-x0a#"

separators = st.one_of(
    st.sampled_from(SEPARATOR_SETS),
    st.tuples(st.text(_SEP_ALPHABET, min_size=1, max_size=3), st.text(_SEP_ALPHABET, min_size=1, max_size=3)),
)

_WILD_VALUES = st.one_of(
    st.sampled_from([-2, -1, 0, 1, 3, 8, 255, 256, 0xFFFF, 0x10000, 2**31, 2**32 + 3, 2**63, 2**64]),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 300),
)
# In-range values per field position (class, vendor, product, version, allow).
_GOOD_VALUES = [
    st.integers(-1, 255),
    st.integers(-1, 0xFFFF),
    st.integers(-1, 0xFFFF),
    st.integers(-1, 0xFFFF),
    st.sampled_from([0, 1, 2, -1, 2**32]),
]


def _render(draw: st.DrawFn, value: int) -> str:
    sign = "-" if value < 0 else draw(st.sampled_from(["", "", "+"]))
    mag = abs(value)
    body = draw(st.sampled_from([str(mag), hex(mag), hex(mag).upper(), "0" + oct(mag)[2:]]))
    lead = draw(st.sampled_from(["", "", "", " ", "\t", " \v\f\r"]))
    return lead + sign + body


junk = st.one_of(
    st.text(" \t0123456789xXabcdefABCDEFg+-#8", min_size=1, max_size=6),
    st.sampled_from(["0x", "-", "+", " ", "0x-1", "08", "09", "1 ", "--1", "0xx1", "0b1"]),
)


@st.composite
def rule_fields(draw: st.DrawFn) -> list[str]:
    """Mostly five in-range numbers; sometimes wild values, junk, wrong counts."""
    if draw(st.integers(0, 3)):
        fields = [_render(draw, draw(values)) for values in _GOOD_VALUES]
        if draw(st.integers(0, 5)) == 0:
            fields[draw(st.integers(0, 4))] = draw(junk)
        return fields
    count = draw(st.sampled_from([5, 5, 4, 6, 1, 0]))
    return [_render(draw, draw(_WILD_VALUES)) if draw(st.integers(0, 3)) else draw(junk) for _ in range(count)]


@st.composite
def filter_strings(draw: st.DrawFn) -> tuple[str, str, str]:
    tsep, rsep = draw(separators)
    rules = []
    for _ in range(draw(st.integers(0, 4))):
        fields = draw(rule_fields())
        tok_runs = [draw(st.text(tsep, min_size=1, max_size=2)) for _ in fields]
        pre = draw(st.text(tsep, max_size=2))
        rules.append(pre + "".join(f + s for f, s in zip(fields, tok_runs, strict=True))[: -1 or None])
    pieces = [draw(st.text(rsep, max_size=2))]
    for rule in rules:
        pieces += [rule, draw(st.text(rsep, min_size=1, max_size=3))]
    return "".join(pieces), tsep, rsep


@SETTINGS
@given(filter_strings())
def test_generated_filters_match_reference(ref: RefFilter, case: tuple[str, str, str]) -> None:
    _compare_parse(ref, *case)


@SETTINGS
@given(
    st.text(st.characters(blacklist_characters="\0", max_codepoint=0x2FF), max_size=40),
    separators,
)
def test_arbitrary_text_matches_reference(ref: RefFilter, text: str, seps: tuple[str, str]) -> None:
    _compare_parse(ref, text, *seps)


@SETTINGS
@given(
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=30),
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=0, max_size=3),
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=0, max_size=3),
)
def test_unicode_separators_match_reference(ref: RefFilter, text: str, tsep: str, rsep: str) -> None:
    raw, rawt, rawr = (s.encode() for s in (text, tsep, rsep))
    rc, c_rules = ref.string_to_rules(raw, rawt, rawr)
    try:
        ours = parse_rules(text, tsep, rsep)
    except FilterError:
        assert rc != 0
        return
    assert rc == 0
    assert [_c(r) for r in ours] == [(a, b, c, d, int(e != 0)) for a, b, c, d, e in c_rules]


# Matching -------------------------------------------------------------------

_CLASSES = st.sampled_from([0x00, 0x01, 0x03, 0x08, 0x0E, 0xEF, 0xFF]) | st.integers(0, 255)
_IDS = st.sampled_from([0x0000, 0x046D, 0x1234, 0xFFFF]) | st.integers(0, 0xFFFF)

rules_strategy = st.lists(
    st.builds(
        FilterRule,
        st.sampled_from([-1, 0x00, 0x03, 0x08, 0x0E, 0xEF, 0xFF, 0x01]),
        st.sampled_from([-1, 0x046D, 0x1234]),
        st.sampled_from([-1, 0x1234, 0x5678]),
        st.sampled_from([-1, 0x0110, 0x0000]),
        st.booleans(),
    ),
    max_size=6,
)
interfaces = st.lists(
    st.tuples(
        _CLASSES,
        st.sampled_from([0, 0, 1, 6]) | st.integers(0, 255),
        st.sampled_from([0, 0, 1, 2, 80]) | st.integers(0, 255),
    ),
    max_size=6,
)
devices = st.tuples(
    _CLASSES,
    st.integers(0, 255),
    st.integers(0, 255),
    interfaces,
    st.sampled_from([0x046D, 0x1234, 0x4321]) | _IDS,
    st.sampled_from([0x1234, 0x5678, 0x9999]) | _IDS,
    st.sampled_from([0x0110, 0x0000, 0x0200]) | _IDS,
)


@SETTINGS
@given(rules_strategy, devices)
def test_check_matches_reference(ref: RefFilter, rules: list[FilterRule], device: tuple) -> None:
    c_rules = [_c(r) for r in rules]
    for flags in range(4):
        assert int(check(rules, *device, flags)) == ref.check(c_rules, *device, flags), flags


@SETTINGS
@given(
    st.lists(
        st.builds(
            FilterRule,
            st.integers(-3, 258),
            st.integers(-3, 0x10001),
            st.integers(-3, 0x10001),
            st.integers(-3, 0x10001),
            st.booleans(),
        ),
        max_size=4,
    ),
    devices,
)
def test_verify_and_invalid_rules_match_reference(ref: RefFilter, rules: list[FilterRule], device: tuple) -> None:
    c_rules = [_c(r) for r in rules]
    c_valid = ref.verify(c_rules) == 0
    try:
        verify_rules(rules)
    except FilterError:
        assert not c_valid
    else:
        assert c_valid
    if c_valid:
        assert rules_to_string(rules).encode() == ref.rules_to_string(c_rules)
    else:
        assert ref.rules_to_string(c_rules) is None
    for flags in range(4):
        assert int(check(rules, *device, flags)) == ref.check(c_rules, *device, flags)
