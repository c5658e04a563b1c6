"""Fixtures of the client tests: emulated devices on a virtual backend
(closed after the test) and the reference parser the engine tests talk to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from redirgate.client.virtual import KeyboardDevice, LoopbackDevice, MassStorageDevice, VirtualBackend
from tests.support.system import require_libusbredirparser


@pytest.fixture
def reference_parser() -> None:
    """libusbredirparser, the guest role of the engine tests (fails in CI when missing)."""
    require_libusbredirparser()


@pytest.fixture
def loopback() -> Iterator[tuple[VirtualBackend, LoopbackDevice]]:
    device = LoopbackDevice()
    backend = VirtualBackend([device])
    yield backend, device
    backend.close()


@pytest.fixture
def keyboard() -> Iterator[tuple[VirtualBackend, KeyboardDevice]]:
    device = KeyboardDevice()
    backend = VirtualBackend([device])
    yield backend, device
    backend.close()


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[tuple[VirtualBackend, MassStorageDevice, Path]]:
    """A 4 MiB mass-storage stick; the third item is its image file."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4 << 20))
    device = MassStorageDevice(image)
    backend = VirtualBackend([device])
    yield backend, device, image
    backend.close()
