"""Helpers for the serial tests: a pty pair stands in for the device (the test
holds the master end), a served port on 127.0.0.1:0, and pyserial's real
RFC 2217 client run in a worker thread (it is blocking)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import sys
import termios
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import serial
import trio

from redirgate.client.serial.selector import PortSelector
from redirgate.client.serial.serve import serve_serial_listen
from redirgate.client.serial.service import PortService
from redirgate.client.serial.settings import LineSettings

T = TypeVar("T")


def tty_unread(fd: int) -> int:
    """Bytes in a tty's input queue that its reader has not taken yet."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, bytes(4)), sys.byteorder)


def read_fd_exactly(fd: int, n: int, net_s: float = 60.0) -> bytes:
    """Block until `n` bytes came on `fd` (a pty master, say); `net_s` is a safety net."""
    out = bytearray()
    deadline = time.monotonic() + net_s
    while len(out) < n:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"only {len(out)} of {n} bytes came within {net_s:g} s (the safety net)"
        out += os.read(fd, n - len(out))
    return bytes(out)


@dataclass
class Pty:
    """The far end of a pty: `master` is ours, `path` is the device to serve."""

    master: int
    path: str

    def cflag(self) -> int:
        return termios.tcgetattr(self.master)[2]  # master reports the slave's termios

    def iflag(self) -> int:
        return termios.tcgetattr(self.master)[0]

    def speed(self) -> int:
        return termios.tcgetattr(self.master)[4]

    def unread_by_device(self) -> int:
        """Bytes written to the master that the device side has not read yet."""
        fd = os.open(self.path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            return tty_unread(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


@contextlib.contextmanager
def pty_pair() -> Iterator[Pty]:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)  # the service opens the path; the master keeps the pty alive
    os.set_blocking(master, False)
    pty = Pty(master, path)
    try:
        yield pty
    finally:
        pty.close()


async def read_master(pty: Pty, n: int) -> bytes:
    """Exactly `n` bytes the service wrote to the device."""
    got = bytearray()
    while len(got) < n:
        try:
            chunk = os.read(pty.master, min(65536, n - len(got)))
        except BlockingIOError:
            await trio.lowlevel.wait_readable(pty.master)
            continue
        except OSError as exc:  # EIO while no slave is open (the service reopens it)
            if exc.errno != errno.EIO:
                raise
            await trio.sleep(0.01)  # a poll interval: no fd readiness says when the service reopens the slave
            continue
        got += chunk
    return bytes(got)


async def write_master(pty: Pty, data: bytes) -> None:
    """Bytes 'from the device' (waits while the pty is full)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(pty.master, view) :]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(pty.master)


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await stream.receive_some(n - len(got))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def make_service(path: str | Path, settings: LineSettings | None = None, **kwargs: Any) -> PortService:
    kwargs.setdefault("reopen_interval_s", 0.05)
    return PortService("test-port", PortSelector(path=str(path)), settings or LineSettings(baud=9600), **kwargs)


@contextlib.asynccontextmanager
async def serving(service: PortService, protocol: str = "raw") -> AsyncIterator[int]:
    """Run `service` and a listener on 127.0.0.1:0; yields the TCP port; stops both."""
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        listeners = await nursery.start(partial(serve_serial_listen, "127.0.0.1", 0, service, protocol=protocol))
        try:
            yield listeners[0].socket.getsockname()[1]
        finally:
            nursery.cancel_scope.cancel()


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


class RemotePort:
    """pyserial's rfc2217:// client, every call in a worker thread; always closed."""

    def __init__(self, client: serial.SerialBase) -> None:
        self.client = client

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args)

    async def set(self, name: str, value: object) -> None:
        await self.call(setattr, self.client, name, value)

    async def get(self, name: str) -> Any:
        return await self.call(getattr, self.client, name)


@contextlib.asynccontextmanager
async def pyserial_rfc2217(port: int, query: str = "", **kwargs: Any) -> AsyncIterator[RemotePort]:
    kwargs.setdefault("timeout", 2)
    url = f"rfc2217://127.0.0.1:{port}{query}"
    client = await trio.to_thread.run_sync(partial(serial.serial_for_url, url, **kwargs))
    try:
        yield RemotePort(client)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(client.close)  # joins pyserial's reader thread


@dataclass
class BothWays:
    """Numbered lines each way between a VM-side stream and a port's pty
    (`both_ways`): every byte must arrive once and in order, whatever breaks
    between the shares."""

    vm: trio.abc.SendStream
    pty: Pty
    to_device: bytes
    to_vm: bytes
    got_device: bytearray
    got_vm: bytearray

    async def send(self, part: int, parts: int) -> None:
        """Share `part` (from 0) of `parts` equal shares, each way: VM -> device, then device -> VM."""
        for data, send in ((self.to_device, self.vm.send_all), (self.to_vm, partial(write_master, self.pty))):
            share = len(data) // parts
            end = len(data) if part == parts - 1 else (part + 1) * share
            await send(data[part * share : end])


@contextlib.asynccontextmanager
async def both_ways(vm: trio.abc.Stream, pty: Pty, lines: int) -> AsyncIterator[BothWays]:
    """`lines` 7-byte numbered lines each way, read to the end by two tasks;
    the caller sends them in shares (`BothWays.send`) with its faults between.
    Leaving waits until both readers have every byte; then compare
    `got_device` with `to_device` and `got_vm` with `to_vm`."""
    traffic = BothWays(
        vm,
        pty,
        b"".join(b"%06d\n" % i for i in range(lines)),
        b"".join(b"%06d\r" % i for i in range(lines)),
        bytearray(),
        bytearray(),
    )

    async def device_reader() -> None:
        traffic.got_device.extend(await read_master(pty, len(traffic.to_device)))

    async def vm_reader() -> None:
        traffic.got_vm.extend(await receive_exactly(vm, len(traffic.to_vm)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(device_reader)
        nursery.start_soon(vm_reader)
        yield traffic
