"""The VFIO ioctl numbers the guest check uses are the ones linux/vfio.h defines (linux-libc-dev)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.system import require
from tests.support.vfio_check import IOCTLS

HEADER = Path("/usr/include/linux/vfio.h")


def test_ioctl_offsets_match_the_kernel_header() -> None:
    require("linux/vfio.h", HEADER.is_file(), "install linux-libc-dev")
    text = HEADER.read_text()
    assert re.search(r"#define VFIO_TYPE\s+\(';'\)", text) and re.search(r"#define VFIO_BASE\s+100\b", text)
    for name, offset in IOCTLS.items():
        found = re.search(rf"#define {name}\s+_IO\(VFIO_TYPE, VFIO_BASE \+ (\d+)\)", text)
        assert found is not None and int(found.group(1)) == offset, name
