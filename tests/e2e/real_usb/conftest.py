"""One real-USB lab for the whole session (tests/support/usblab.py): thin-client VM, VM side, gateway,
one `client run`.  Each test plugs its gadget, hot-adds a usb-redir to the VM side, does its work and
takes both away again; a test that must stop the client starts it again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.guest import guest_unavailable_reason
from tests.support.system import require, require_system
from tests.support.usblab import UsbLab, running_usb_lab


@pytest.fixture(scope="session")
def usb_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UsbLab]:
    reason = guest_unavailable_reason()
    require("QEMU test guest", reason is None, reason or "")
    require_system("certutil")
    with running_usb_lab(tmp_path_factory.mktemp("thinclient"), tmp_path_factory.mktemp("vmside")) as lab:
        yield lab


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The hub test runs after every other test of the session.

    Known bug, open in issue 12: after the hub test's channel (QEMU's usb-kbd
    behind a usb-hub on the thin client's xhci) `client run` in the thin
    client died without a word (its log ends in libusb's `destroy device`),
    so every real-device test after it found the client offline.  Until that
    is found, nothing depends on the client surviving it.
    """
    hub = [item for item in items if "real_usb/test_hub.py" in item.nodeid]
    items[:] = [item for item in items if "real_usb/test_hub.py" not in item.nodeid] + hub
