"""Errors of the serial-port side; each names the port and, where it applies, the setting.

OS and pyserial exceptions are translated into these in `port.py` only.
"""

from __future__ import annotations

__all__ = ["PortBusy", "PortUnavailable", "SelectorError", "SerialError", "SettingError"]


class SerialError(Exception):
    """Base: `port` is the selector or path, `reason` what went wrong."""

    def __init__(self, port: str, reason: str) -> None:
        self.port = port
        self.reason = reason
        super().__init__(f"{port}: {reason}")


class SelectorError(SerialError):
    """A port selector that cannot be parsed or matches nothing."""


class SettingError(SerialError):
    """A line setting that is invalid or that the port cannot take."""

    def __init__(self, port: str, setting: str, value: object, reason: str) -> None:
        self.setting = setting
        self.value = value
        super().__init__(port, f"cannot set {setting}={value!r}: {reason}")


class PortUnavailable(SerialError):
    """The port could not be opened, or vanished (USB-serial unplugged)."""


class PortBusy(SerialError):
    """A consumer is already attached and takeover is off."""
