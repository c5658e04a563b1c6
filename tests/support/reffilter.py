"""ctypes binding of the reference filter functions in libusbredirparser.

Owns only the calls into `usbredirfilter.h` (string_to_rules, rules_to_string,
check, verify, free) so tests can hold `redirgate.proto.usbredir.filter` to
the real C code.  Rules cross the boundary as plain 5-tuples of C ints
(class, vendor, product, version, allow); strings as bytes, exactly what the
C code sees.  Memory the library allocates is released with
usbredirfilter_free, also when a call fails.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterable, Sequence

from tests.support.system import require_libusbredirparser

__all__ = ["CRule", "RefFilter", "reference_filter"]

CRule = tuple[int, int, int, int, int]


class _Rule(ctypes.Structure):
    # struct usbredirfilter_rule (usbredirfilter.h): five C ints.
    _fields_ = [
        ("device_class", ctypes.c_int),
        ("vendor_id", ctypes.c_int),
        ("product_id", ctypes.c_int),
        ("device_version_bcd", ctypes.c_int),
        ("allow", ctypes.c_int),
    ]


_RulePtr = ctypes.POINTER(_Rule)
_u8p = ctypes.POINTER(ctypes.c_uint8)


class RefFilter:
    """The reference filter functions of one loaded libusbredirparser."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        self.path = path
        self._to_rules = lib.usbredirfilter_string_to_rules
        self._to_rules.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.POINTER(_RulePtr),
            ctypes.POINTER(ctypes.c_int),
        ]
        self._to_rules.restype = ctypes.c_int
        self._to_string = lib.usbredirfilter_rules_to_string
        self._to_string.argtypes = [_RulePtr, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p]
        self._to_string.restype = ctypes.c_void_p  # keep the pointer to free it
        self._check = lib.usbredirfilter_check
        self._check.argtypes = [
            _RulePtr,
            ctypes.c_int,
            ctypes.c_uint8,
            ctypes.c_uint8,
            ctypes.c_uint8,
            _u8p,
            _u8p,
            _u8p,
            ctypes.c_int,
            ctypes.c_uint16,
            ctypes.c_uint16,
            ctypes.c_uint16,
            ctypes.c_int,
        ]
        self._check.restype = ctypes.c_int
        self._verify = lib.usbredirfilter_verify
        self._verify.argtypes = [_RulePtr, ctypes.c_int]
        self._verify.restype = ctypes.c_int
        self._free = lib.usbredirfilter_free
        self._free.argtypes = [ctypes.c_void_p]
        self._free.restype = None

    def string_to_rules(self, text: bytes, token_sep: bytes = b",", rule_sep: bytes = b"|") -> tuple[int, list[CRule]]:
        """(return code, rules); rules is empty unless the code is 0."""
        out = _RulePtr()
        count = ctypes.c_int(0)
        rc = self._to_rules(text, token_sep, rule_sep, ctypes.byref(out), ctypes.byref(count))
        try:
            if rc != 0:
                return rc, []
            return rc, [
                (r.device_class, r.vendor_id, r.product_id, r.device_version_bcd, r.allow)
                for r in (out[i] for i in range(count.value))
            ]
        finally:
            if out:
                self._free(ctypes.cast(out, ctypes.c_void_p))

    def rules_to_string(self, rules: Sequence[CRule], token_sep: bytes = b",", rule_sep: bytes = b"|") -> bytes | None:
        """The serialised filter, or None where the C function returns NULL."""
        array = _array(rules)
        ptr = self._to_string(array, len(rules), token_sep, rule_sep)
        if not ptr:
            return None
        try:
            return ctypes.string_at(ptr)
        finally:
            self._free(ptr)

    def verify(self, rules: Sequence[CRule]) -> int:
        return self._verify(_array(rules), len(rules))

    def check(
        self,
        rules: Sequence[CRule],
        device_class: int,
        device_subclass: int,
        device_protocol: int,
        interfaces: Iterable[tuple[int, int, int]],
        vendor_id: int,
        product_id: int,
        device_version_bcd: int,
        flags: int = 0,
    ) -> int:
        ifaces = list(interfaces)
        n = max(len(ifaces), 1)  # never hand C a zero-length array
        cls = (ctypes.c_uint8 * n)(*(i[0] for i in ifaces))
        sub = (ctypes.c_uint8 * n)(*(i[1] for i in ifaces))
        proto = (ctypes.c_uint8 * n)(*(i[2] for i in ifaces))
        return self._check(
            _array(rules),
            len(rules),
            device_class,
            device_subclass,
            device_protocol,
            ctypes.cast(cls, _u8p),
            ctypes.cast(sub, _u8p),
            ctypes.cast(proto, _u8p),
            len(ifaces),
            vendor_id,
            product_id,
            device_version_bcd,
            flags,
        )


def _array(rules: Sequence[CRule]) -> ctypes.Array[_Rule]:
    return (_Rule * max(len(rules), 1))(*(_Rule(*r) for r in rules))


@functools.cache
def _load(path: str) -> RefFilter:
    return RefFilter(path)


def reference_filter() -> RefFilter:
    """The reference filter; fails (CI) or skips the calling test when the
    library is missing (tests/support/system.py)."""
    return _load(require_libusbredirparser())
