"""usbredir device filter rules: parsing, serialising and matching (sans-IO).

This module owns the filter-string grammar and the allow/block decision of
usbredir's `usbredirfilter.c` (protocol reference §6).  It must behave exactly
like the reference so that a filter QEMU or a usbredir host accepts is
accepted here, with the same rules, and decides every device the same way;
tests/proto/test_filter_reference.py holds it to that through ctypes.  It
does no I/O, keeps no state and never logs.

Exactness notes (each one is a property of the C code, kept on purpose):

* Splitting is C `strtok`: every *byte* of a separator set separates, runs of
  separators count as one, empty rules and fields vanish.  Text is handled as
  its UTF-8 bytes, as the C library sees it.
* A field is C `strtol(token, &end, 0)` and the whole token must be used:
  leading C-locale whitespace, a sign, `0x` hex, a leading `0` is octal.  The
  `long` result is clamped to 64 bits and then stored in a C `int` (two's
  complement truncation), so `4294967297` is 1 and a huge number is -1
  ("any").  `allow` is not range-checked; any non-zero `int` allows.
* Matching runs one pass with the device class (unless it is 0x00 or 0xEF)
  and one per interface, skipping non-boot HID interfaces on devices with
  more than one interface; if every interface was skipped the check is rerun
  with skipping disabled.

Deliberate difference: a NUL character is an error here.  The C functions
take NUL-terminated strings and would silently drop everything after it.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
from collections.abc import Iterable, Sequence

from redirgate.proto.usbredir.errors import ProtocolError

__all__ = [
    "QEMU_TOKEN_SEP",
    "WIRE_RULE_SEP",
    "WIRE_TOKEN_SEP",
    "DeviceInfo",
    "FilterError",
    "FilterFlag",
    "FilterRule",
    "Verdict",
    "check",
    "check_device",
    "parse_rules",
    "rules_to_string",
    "verify_rules",
]

#: Separators of a `filter_filter` message and of the usbredir tools (§6.1).
WIRE_TOKEN_SEP = ","
WIRE_RULE_SEP = "|"
#: QEMU's `-device usb-redir,filter=` property uses `:` between fields.
QEMU_TOKEN_SEP = ":"

#: usbredirfilter_check's class values that skip the device pass:
#: 0x00 "class per interface" and 0xEF "miscellaneous" (IAD devices).
_SKIP_DEVICE_CLASSES = (0x00, 0xEF)
#: USB HID interface class.
_HID_CLASS = 0x03

# C-locale isspace(): space, \t \n \v \f \r.
_C_SPACE = b" \t\n\v\f\r"
_LONG_MIN = -(1 << 63)
_LONG_MAX = (1 << 63) - 1
_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


class FilterError(ProtocolError):
    """A filter string, a rule or a device description the reference rejects.

    `rule_index` (0-based) and `rule_text` name the offending rule when there
    is one; `reason` says what is wrong with it.
    """

    def __init__(self, reason: str, *, rule_index: int | None = None, rule_text: str | None = None) -> None:
        self.rule_index = rule_index
        self.rule_text = rule_text
        if rule_index is None:
            full = reason
        elif rule_text is None:
            full = f"filter rule {rule_index + 1}: {reason}"
        else:
            full = f"filter rule {rule_index + 1} {rule_text!r}: {reason}"
        super().__init__(full)
        self.reason = reason


class FilterFlag(enum.IntFlag):
    """usbredirfilter_check flags (usbredirfilter.h)."""

    NONE = 0
    DEFAULT_ALLOW = 0x01
    DONT_SKIP_NON_BOOT_HID = 0x02


class Verdict(enum.IntEnum):
    """Result of `check`, numerically equal to usbredirfilter_check's return."""

    ALLOWED = 0
    BLOCKED = -errno.EPERM
    NO_MATCH = -errno.ENOENT
    INVALID = -errno.EINVAL

    @property
    def allowed(self) -> bool:
        return self is Verdict.ALLOWED


@dataclasses.dataclass(frozen=True)
class FilterRule:
    """One rule; -1 in a numeric field matches anything.

    Mirrors `struct usbredirfilter_rule`.  The constructor checks types only;
    ranges (class -1..255, ids and version -1..65535) are checked by
    `verify_rules`, by `rules_to_string`, and by `check` (which answers
    `Verdict.INVALID`, like the C code).  `parse_rules` only returns valid
    rules.
    """

    device_class: int
    vendor_id: int
    product_id: int
    device_version_bcd: int
    allow: bool

    def __post_init__(self) -> None:
        for name in ("device_class", "vendor_id", "product_id", "device_version_bcd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"FilterRule.{name} must be an int, not {type(value).__name__}")
        if not isinstance(self.allow, bool):
            raise TypeError(f"FilterRule.allow must be a bool, not {type(self.allow).__name__}")

    @property
    def problem(self) -> str | None:
        """Why usbredirfilter_verify would reject this rule, or None."""
        if not -1 <= self.device_class <= 0xFF:
            return f"device class {self.device_class} outside -1..255"
        for name, value in (
            ("vendor id", self.vendor_id),
            ("product id", self.product_id),
            ("device version", self.device_version_bcd),
        ):
            if not -1 <= value <= 0xFFFF:
                return f"{name} {value} outside -1..65535"
        return None

    def matches(self, device_class: int, vendor_id: int, product_id: int, bcd: int) -> bool:
        return (
            self.device_class in (-1, device_class)
            and self.vendor_id in (-1, vendor_id)
            and self.product_id in (-1, product_id)
            and self.device_version_bcd in (-1, bcd)
        )


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What `check` looks at: the device descriptor's class triple, the ids,
    bcdDevice and each interface's (class, subclass, protocol)."""

    device_class: int
    device_subclass: int
    device_protocol: int
    interfaces: tuple[tuple[int, int, int], ...]
    vendor_id: int
    product_id: int
    device_version_bcd: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "interfaces", tuple(tuple(i) for i in self.interfaces))
        for name in ("device_class", "device_subclass", "device_protocol"):
            _check_uint(name, getattr(self, name), 0xFF)
        for name in ("vendor_id", "product_id", "device_version_bcd"):
            _check_uint(name, getattr(self, name), 0xFFFF)
        for n, iface in enumerate(self.interfaces):
            if len(iface) != 3:
                raise FilterError(f"interface {n} must be (class, subclass, protocol), got {iface!r}")
            for part, value in zip(("class", "subclass", "protocol"), iface, strict=True):
                _check_uint(f"interface {n} {part}", value, 0xFF)


def _check_uint(name: str, value: object, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise FilterError(f"device {name} must be an int in 0..{limit}, got {value!r}")


# --------------------------------------------------------------------------
# Parsing


def _c_string(value: str | bytes, what: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
    if b"\0" in raw:
        raise FilterError(f"{what} contains a NUL character")
    return raw


def _strtok(text: bytes, seps: bytes) -> list[bytes]:
    """The pieces C strtok_r would return, in order."""
    out: list[bytes] = []
    start = None
    for i, byte in enumerate(text):
        if byte in seps:
            if start is not None:
                out.append(text[start:i])
                start = None
        elif start is None:
            start = i
    if start is not None:
        out.append(text[start:])
    return out


def _strtol_int(token: bytes) -> int | None:
    """C `(int)strtol(token, &end, 0)` when `*end == 0`, else None."""
    i = 0
    n = len(token)
    while i < n and token[i] in _C_SPACE:
        i += 1
    negative = False
    if i < n and token[i] in b"+-":
        negative = token[i] == ord("-")
        i += 1
    base = 10
    if i < n and token[i] == ord("0"):
        if i + 1 < n and token[i + 1] in b"xX":
            # "0x" counts as a hex prefix only when a hex digit follows;
            # otherwise strtol parses the "0" and stops at the "x".
            if i + 2 < n and chr(token[i + 2]) in _DIGITS[16]:
                base = 16
                i += 2
            else:
                return None
        else:
            base = 8
    digits = token[i:]
    if not digits:
        return None
    if any(chr(d) not in _DIGITS[base] for d in digits):
        return None
    text = digits.decode("ascii").lstrip("0") or "0"
    # Anything this long is beyond a C long and clamps anyway; int() would
    # also refuse decimal strings past sys.get_int_max_str_digits().
    value = int(text, base) if len(text) <= 64 else _LONG_MAX + 1
    if negative:
        value = -value
    value = max(_LONG_MIN, min(_LONG_MAX, value))
    # Stored into an `int` field: keep the low 32 bits, two's complement.
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def parse_rules(
    text: str | bytes, token_sep: str | bytes = WIRE_TOKEN_SEP, rule_sep: str | bytes = WIRE_RULE_SEP
) -> tuple[FilterRule, ...]:
    """Parse a filter string like usbredirfilter_string_to_rules.

    `token_sep` and `rule_sep` are separator *sets* (any of their bytes
    separates).  An empty filter, or one of separators only, is zero rules.
    Raises `FilterError` naming the first bad rule and the reason; one bad
    rule rejects the whole filter.
    """
    tsep = _c_string(token_sep, "token separator set")
    rsep = _c_string(rule_sep, "rule separator set")
    if not tsep:
        raise FilterError("empty token separator set")
    if not rsep:
        raise FilterError("empty rule separator set")
    raw = _c_string(text, "filter string")
    rules = []
    for index, rule_text in enumerate(_strtok(raw, rsep)):
        rules.append(_parse_rule(index, rule_text, tsep))
    return tuple(rules)


def _parse_rule(index: int, rule_text: bytes, tsep: bytes) -> FilterRule:
    shown = rule_text.decode("utf-8", "backslashreplace")
    tokens = _strtok(rule_text, tsep)
    values: list[int] = []
    for token in tokens[:5]:
        value = _strtol_int(token)
        if value is None:
            token_shown = token.decode("utf-8", "backslashreplace")
            raise FilterError(
                f"field {len(values) + 1} {token_shown!r} is not a number", rule_index=index, rule_text=shown
            )
        values.append(value)
    if len(tokens) != 5:
        raise FilterError(
            f"has {len(tokens)} fields, needs 5 (class, vendor, product, version, allow)",
            rule_index=index,
            rule_text=shown,
        )
    rule = FilterRule(values[0], values[1], values[2], values[3], values[4] != 0)
    problem = rule.problem
    if problem is not None:
        raise FilterError(problem, rule_index=index, rule_text=shown)
    return rule


# --------------------------------------------------------------------------
# Serialising and verifying


def verify_rules(rules: Iterable[FilterRule]) -> None:
    """Raise `FilterError` for the first rule usbredirfilter_verify rejects."""
    for index, rule in enumerate(rules):
        problem = rule.problem
        if problem is not None:
            raise FilterError(problem, rule_index=index)


def rules_to_string(
    rules: Iterable[FilterRule],
    token_sep: str = WIRE_TOKEN_SEP,
    rule_sep: str = WIRE_RULE_SEP,
) -> str:
    """Serialise like usbredirfilter_rules_to_string.

    Class as `0x%02x`, ids and version as `0x%04x`, -1 as `-1`, allow as
    1/0; fields joined by the first character of `token_sep`, rules by the
    first character of `rule_sep`.  (The C code uses the first *byte*; the two
    agree for ASCII separators.)  Raises `FilterError` for invalid rules or
    empty separator sets.
    """
    rules = tuple(rules)
    verify_rules(rules)
    if not token_sep or not rule_sep:
        raise FilterError("empty separator set")
    if "\0" in token_sep[0] + rule_sep[0]:
        raise FilterError("NUL separator")
    tok = token_sep[0]
    parts = []
    for rule in rules:
        fields = (
            _hex(rule.device_class, 2),
            _hex(rule.vendor_id, 4),
            _hex(rule.product_id, 4),
            _hex(rule.device_version_bcd, 4),
            "1" if rule.allow else "0",
        )
        parts.append(tok.join(fields))
    return rule_sep[0].join(parts)


def _hex(value: int, width: int) -> str:
    return "-1" if value == -1 else f"0x{value:0{width}x}"


# --------------------------------------------------------------------------
# Matching


def _pass(rules: Sequence[FilterRule], device_class: int, vid: int, pid: int, bcd: int, default_allow: bool) -> Verdict:
    for rule in rules:
        if rule.matches(device_class, vid, pid, bcd):
            return Verdict.ALLOWED if rule.allow else Verdict.BLOCKED
    return Verdict.ALLOWED if default_allow else Verdict.NO_MATCH


def check(
    rules: Iterable[FilterRule],
    device_class: int,
    device_subclass: int,
    device_protocol: int,
    interfaces: Iterable[tuple[int, int, int]],
    vendor_id: int,
    product_id: int,
    device_version_bcd: int,
    flags: FilterFlag | int = FilterFlag.NONE,
) -> Verdict:
    """Decide a device like usbredirfilter_check (see the module docstring).

    `interfaces` holds one (class, subclass, protocol) per interface.  Raises
    `FilterError` for device values outside their USB field widths; invalid
    *rules* give `Verdict.INVALID`, as in C.
    """
    device = DeviceInfo(
        device_class,
        device_subclass,
        device_protocol,
        tuple(interfaces),
        vendor_id,
        product_id,
        device_version_bcd,
    )
    return check_device(rules, device, flags)


def check_device(rules: Iterable[FilterRule], device: DeviceInfo, flags: FilterFlag | int = FilterFlag.NONE) -> Verdict:
    """`check` for a `DeviceInfo`."""
    rules = tuple(rules)
    if any(rule.problem is not None for rule in rules):
        return Verdict.INVALID
    return _check(rules, device, int(flags))


def _check(rules: tuple[FilterRule, ...], device: DeviceInfo, flags: int) -> Verdict:
    default_allow = bool(flags & FilterFlag.DEFAULT_ALLOW)
    ids = (device.vendor_id, device.product_id, device.device_version_bcd)
    if device.device_class not in _SKIP_DEVICE_CLASSES:
        verdict = _pass(rules, device.device_class, *ids, default_allow)
        if verdict is not Verdict.ALLOWED:
            return verdict
    skip_hid = not flags & FilterFlag.DONT_SKIP_NON_BOOT_HID and len(device.interfaces) > 1
    skipped = 0
    for iface_class, iface_subclass, iface_protocol in device.interfaces:
        if skip_hid and (iface_class, iface_subclass, iface_protocol) == (_HID_CLASS, 0, 0):
            skipped += 1
            continue
        verdict = _pass(rules, iface_class, *ids, default_allow)
        if verdict is not Verdict.ALLOWED:
            return verdict
    if device.interfaces and skipped == len(device.interfaces):
        return _check(rules, device, flags | FilterFlag.DONT_SKIP_NON_BOOT_HID.value)
    return Verdict.ALLOWED
