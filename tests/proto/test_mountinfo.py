"""proto/mountinfo.py: the kernel's mount table lines, table-tested."""

from __future__ import annotations

import pytest

from redirgate.proto.mountinfo import Mount, parse_mountinfo, unescape_mount_field


@pytest.mark.parametrize(
    ("line", "mount"),
    [
        (
            "29 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro",
            Mount("8:2", "/", "ext4", "/dev/sda2", "rw,errors=remount-ro"),
        ),
        (  # no optional fields
            "40 29 0:33 / /srv rw - btrfs /dev/nvme0n1p2 rw,ssd,subvol=/srv",
            Mount("0:33", "/srv", "btrfs", "/dev/nvme0n1p2", "rw,ssd,subvol=/srv"),
        ),
        (  # several optional fields; escaped blanks in the mount point and the source
            r"41 29 8:17 / /media/my\040stick rw shared:5 master:2 - vfat /dev/sdb1\040x rw",
            Mount("8:17", "/media/my stick", "vfat", "/dev/sdb1 x", "rw"),
        ),
        (  # a mount point called "-": the separator is searched from the seventh field on
            "42 29 0:40 / - rw - tmpfs tmpfs rw,size=1024k",
            Mount("0:40", "-", "tmpfs", "tmpfs", "rw,size=1024k"),
        ),
        (  # no super options at all
            "43 29 0:41 / /mnt rw - 9p hostroot",
            Mount("0:41", "/mnt", "9p", "hostroot", ""),
        ),
    ],
)
def test_a_line_becomes_one_mount(line: str, mount: Mount) -> None:
    assert parse_mountinfo(line + "\n") == [mount]


@pytest.mark.parametrize(
    "line",
    ["", "29 1 8:2 / / rw", "29 1 8:2 / / rw shared:1 -", "29 1 8:2 / / rw - ext4", "garbage"],
)
def test_a_short_or_broken_line_is_skipped(line: str) -> None:
    assert parse_mountinfo(f"{line}\n44 29 0:42 / /x rw - tmpfs t rw\n") == [Mount("0:42", "/x", "tmpfs", "t", "rw")]


def test_escapes_are_decoded_and_other_backslashes_kept() -> None:
    assert unescape_mount_field(r"a\040b\011c\012d\134e\x") == "a b\tc\nd\\e\\x"
