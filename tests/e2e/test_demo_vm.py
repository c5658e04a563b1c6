"""`redirgate demo --vm`: the demo boots a real guest attached to its routes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.guest import GuestImage


@pytest.mark.system
def test_demo_vm_boots_a_guest_that_lists_the_sticks_files(guest_image: GuestImage, fat_tools: None) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "redirgate.cli", "demo", "--once", "--vm"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all routes answered" in out.stdout
    assert "guest sees redirgate Virtual Flash Drive at 480 Mb/s" in out.stdout
    assert "hello.txt" in out.stdout and "README.txt" in out.stdout
    assert "hello.txt: Hello from a thin client, through the redirgate gateway." in out.stdout
    assert "Virtual Keyboard as a USB device" in out.stdout
