"""Fixtures for tests that boot the real guest under QEMU.

Owns only guest-related fixtures: the gate that fails (CI,
REDIRGATE_REQUIRE_SYSTEM=1) or skips when QEMU, the kernel, busybox or kmod
are missing, the cached guest build, and FAT-tool gating.  Each test starts
and stops its own QEMU through tests.support.qemu; no QEMU outlives a test.
"""

from __future__ import annotations

import pytest

from tests.support.guest import (
    GuestImage,
    build_guest,
    fat_tools_unavailable_reason,
    guest_unavailable_reason,
)
from tests.support.system import require


@pytest.fixture(scope="session")
def _guest_session() -> GuestImage | str:
    reason = guest_unavailable_reason()
    if reason is not None:
        return reason
    return build_guest()


@pytest.fixture
def guest_image(_guest_session: GuestImage | str) -> GuestImage:
    """The cached guest (kernel + base initramfs); fails/skips via require() if absent."""
    require("QEMU test guest", not isinstance(_guest_session, str), str(_guest_session))
    assert isinstance(_guest_session, GuestImage)
    return _guest_session


@pytest.fixture
def fat_tools() -> None:
    """Require mkfs.vfat and mtools for FAT disk images."""
    reason = fat_tools_unavailable_reason()
    require("dosfstools/mtools", reason is None, reason or "")
