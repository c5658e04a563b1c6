"""Virtual device specs: the ``virtual:...`` strings that name an emulated device.

Owns the spec grammar and nothing else::

    virtual:KIND[@OPTION[,OPTION...]][:ARGUMENT]

    virtual:storage:PATH            flash drive on the image file PATH
    virtual:storage@full,ro:PATH    ... at full speed, read-only
    virtual:keyboard                HID boot keyboard
    virtual:loopback[@full]         loopback/source/sink test device
    virtual:hub                     a hub's descriptors (never exported: a test stand-in)

Options: ``full`` / ``high`` (speed; keyboards are always full speed),
``ro`` (storage only).  PATH is everything after the second colon, so it may
itself contain colons.
"""

from __future__ import annotations

from collections.abc import Iterable

from .backend import VirtualBackend
from .descriptors import Speed
from .device import VirtualDevice
from .errors import VirtualSpecError
from .hub import HubDevice
from .keyboard import KeyboardDevice
from .loopback import LoopbackDevice
from .storage import MassStorageDevice

__all__ = ["SPEC_PREFIX", "make_backend", "parse_virtual_spec"]

SPEC_PREFIX = "virtual:"

_SPEEDS = {"full": Speed.FULL, "high": Speed.HIGH}


def parse_virtual_spec(spec: str) -> VirtualDevice:
    """Create the device a ``virtual:...`` spec names (opens the image of a
    storage device).  Raises VirtualSpecError with the reason."""
    if not spec.startswith(SPEC_PREFIX):
        raise VirtualSpecError(spec, f"does not start with {SPEC_PREFIX!r}")
    head, sep, argument = spec[len(SPEC_PREFIX) :].partition(":")
    kind, _, option_text = head.partition("@")
    options = [o for o in option_text.split(",") if o] if option_text else []
    speeds = [_SPEEDS[o] for o in options if o in _SPEEDS]
    unknown = [o for o in options if o not in _SPEEDS and o != "ro"]
    if unknown:
        raise VirtualSpecError(spec, f"unknown option(s) {', '.join(unknown)}")
    if len(speeds) > 1:
        raise VirtualSpecError(spec, "more than one speed")
    if "ro" in options and kind != "storage":
        raise VirtualSpecError(spec, "'ro' only applies to storage")
    speed = speeds[0] if speeds else Speed.HIGH
    if kind == "storage":
        if not argument:
            raise VirtualSpecError(spec, "storage needs an image path: virtual:storage:PATH")
        try:
            return MassStorageDevice(argument, speed=speed, read_only="ro" in options, name=spec)
        except OSError as exc:
            reason = exc.strerror.lower() if exc.strerror else str(exc)
            raise VirtualSpecError(
                spec, f"cannot open the image {argument}: {reason} (make one: truncate -s 64M FILE && mkfs.vfat FILE)"
            ) from exc
    if sep:
        raise VirtualSpecError(spec, f"{kind} takes no argument")
    if kind == "keyboard":
        if speeds and speed != Speed.FULL:
            raise VirtualSpecError(spec, "a boot keyboard is a full-speed device")
        return KeyboardDevice(name=spec)
    if kind == "loopback":
        return LoopbackDevice(speed=speed, name=spec)
    if kind == "hub":
        if speeds:
            raise VirtualSpecError(spec, "a hub takes no speed")
        return HubDevice(name=spec)
    raise VirtualSpecError(spec, f"unknown device kind {kind!r} (storage, keyboard, loopback, hub)")


def make_backend(specs: Iterable[str | VirtualDevice]) -> VirtualBackend:
    """A backend with one plugged-in device per spec (or device object).
    On a bad spec, devices already created are closed before raising."""
    devices: list[VirtualDevice] = []
    try:
        for spec in specs:
            devices.append(spec if isinstance(spec, VirtualDevice) else parse_virtual_spec(spec))
    except VirtualSpecError:
        for device in devices:
            device.close()
        raise
    return VirtualBackend(devices)
