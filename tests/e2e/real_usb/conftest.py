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
