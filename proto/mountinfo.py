"""/proc/self/mountinfo, parsed: the kernel's mount table as records.

The thin client (client/usb/safety.py: which USB device holds the root or
/boot filesystem) and the hypervisor kit (host/deps.py: which PCI function
holds a mounted filesystem) both read it; one parser serves both.  Text in,
records out, no I/O (the callers read the file).

A line (proc(5)): ``ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] -
FSTYPE SOURCE SUPER_OPTIONS``.  The optional fields end at the first lone
``-`` from the seventh field on (a mount point may itself be ``-``, so the
search starts there).  Paths escape space, tab, newline and backslash as
``\\ooo``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Mount", "parse_mountinfo", "unescape_mount_field"]

_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One mount: its device number (``0:N`` for anonymous ones such as btrfs
    subvolumes, 9p, tmpfs), where it is mounted, its type, its source as the
    filesystem names it, and the filesystem's own options."""

    major_minor: str
    mount_point: str
    fstype: str
    source: str
    super_options: str


def unescape_mount_field(field: str) -> str:
    """A path field with the kernel's ``\\ooo`` escapes decoded."""
    return _ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Every well-formed line of `text`, in order (the last mount of a point wins for its callers);
    a line too short to carry the fields above is skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 3:
            continue
        options = fields[sep + 3] if len(fields) > sep + 3 else ""
        mounts.append(
            Mount(
                fields[2],
                unescape_mount_field(fields[4]),
                fields[sep + 1],
                unescape_mount_field(fields[sep + 2]),
                options,
            )
        )
    return mounts
