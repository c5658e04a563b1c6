"""Opens a VFIO group and device the way QEMU does, with plain ioctls: proof that `vfio bind` left a usable group.

Runs inside the IOMMU test guest (the host has no IOMMU).  Steps, each one
the kernel can refuse (Documentation/driver-api/vfio.rst): the container's
API version and type1v2 support, the group is viable (every endpoint on
vfio-pci or driverless), the group joins the container, the container takes
the type1v2 IOMMU (EPERM without interrupt remapping), one page is mapped for
DMA, the device fd opens and reports a PCI device with regions.  The ioctl
numbers are checked against linux/vfio.h in tests/host/test_vfio_numbers.py.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
from contextlib import ExitStack
from typing import Any

__all__ = ["IOCTLS", "open_vfio_device"]

_VFIO_TYPE, _VFIO_BASE = ord(";"), 100


def _io(offset: int) -> int:
    """_IO(VFIO_TYPE, VFIO_BASE + offset): no size or direction bits (asm-generic/ioctl.h)."""
    return (_VFIO_TYPE << 8) | (_VFIO_BASE + offset)


#: name -> VFIO_BASE offset, as linux/vfio.h defines them
IOCTLS = {
    "VFIO_GET_API_VERSION": 0,
    "VFIO_CHECK_EXTENSION": 1,
    "VFIO_SET_IOMMU": 2,
    "VFIO_GROUP_GET_STATUS": 3,
    "VFIO_GROUP_SET_CONTAINER": 4,
    "VFIO_GROUP_GET_DEVICE_FD": 6,
    "VFIO_DEVICE_GET_INFO": 7,
    "VFIO_IOMMU_MAP_DMA": 13,
}
_API_VERSION = 0
_TYPE1V2_IOMMU = 3
_GROUP_FLAGS_VIABLE = 1
_DEVICE_FLAGS_PCI = 1 << 1
_DMA_READ_WRITE = 0b11


def _ioctl(fd: int, name: str, arg: Any = 0) -> Any:
    return fcntl.ioctl(fd, _io(IOCTLS[name]), arg)


def open_vfio_device(group: int, address: str, hold: ExitStack | None = None) -> dict[str, Any]:
    """Walk the whole sequence; returns what each step gave (or the errno of the first that failed).

    With ``hold`` the container, group and device fds stay open until it closes (a VM holding the group).
    """
    report: dict[str, Any] = {}
    stack = ExitStack()
    try:
        container = os.open("/dev/vfio/vfio", os.O_RDWR)
        stack.callback(os.close, container)
        report["api_version"] = _ioctl(container, "VFIO_GET_API_VERSION") == _API_VERSION
        report["type1v2"] = _ioctl(container, "VFIO_CHECK_EXTENSION", _TYPE1V2_IOMMU) == 1
        group_fd = os.open(f"/dev/vfio/{group}", os.O_RDWR)
        stack.callback(os.close, group_fd)
        status = bytearray(struct.pack("II", 8, 0))
        _ioctl(group_fd, "VFIO_GROUP_GET_STATUS", status)
        report["viable"] = bool(struct.unpack("II", status)[1] & _GROUP_FLAGS_VIABLE)
        report["step"] = "set_container"
        _ioctl(group_fd, "VFIO_GROUP_SET_CONTAINER", struct.pack("i", container))
        report["step"] = "set_iommu"
        _ioctl(container, "VFIO_SET_IOMMU", _TYPE1V2_IOMMU)
        report["step"] = "map_dma"
        page = mmap.mmap(-1, mmap.PAGESIZE)
        stack.callback(page.close)
        view = ctypes.c_char.from_buffer(page)
        vaddr = ctypes.addressof(view)
        del view  # the export must end before page.close()
        _ioctl(container, "VFIO_IOMMU_MAP_DMA", struct.pack("IIQQQ", 32, _DMA_READ_WRITE, vaddr, 0, mmap.PAGESIZE))
        report["step"] = "device_fd"
        # a mutable buffer makes fcntl.ioctl return the call's result (the new fd), not a copy of the buffer
        device = _ioctl(group_fd, "VFIO_GROUP_GET_DEVICE_FD", bytearray(address.encode() + b"\0"))
        stack.callback(os.close, device)
        info = bytearray(struct.pack("IIII", 16, 0, 0, 0))
        _ioctl(device, "VFIO_DEVICE_GET_INFO", info)
        _, flags, regions, irqs = struct.unpack("IIII", info)
        report.update(step="done", device_is_pci=bool(flags & _DEVICE_FLAGS_PCI), regions=regions, irqs=irqs)
    except OSError as exc:
        report["error"] = f"{report.get('step', 'open')}: {os.strerror(exc.errno or 0)}"
    finally:
        if hold is not None and "error" not in report:
            hold.push(stack.pop_all())
        else:
            stack.close()
    return report
