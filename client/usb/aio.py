"""Real-device transfers on libusb's asynchronous API, driven by the trio loop.

pyusb still finds, opens and describes devices; its libusb1 backend's ctypes
library (``usb.backend.libusb1._lib``) and context (``backend.ctx``) are the
ones used here, as client/usb/iso.py already does for iso IN.  A transfer is
``libusb_alloc_transfer`` + fill + ``libusb_submit_transfer`` on the loop
thread: no worker thread, and as many in flight per endpoint as the guest
queues (libusb keeps them in order per endpoint).

Threads.  `LibusbAsync` (one per libusb context) and every `Transfer` are
owned by the trio loop thread.  One task at a time (`LibusbAsync.pump`, run
by each device's engine; a second one waits and takes over when the first
is cancelled) waits on libusb's file descriptors (``libusb_get_pollfds``,
registered level-triggered in a private epoll, whose own fd trio waits on)
and calls ``libusb_handle_events_timeout_completed`` with a zero timeout
when one is ready.  Completion callbacks run inside that call, on the loop
thread; the transfers they give back are finished (their trio event set,
their ``on_done`` called) right after libusb returns, still on the loop.  A blocking pyusb call
in a worker thread (claim, set configuration, a descriptor read, the iso IN
reader) may handle libusb's events itself and so run a callback on its
thread: then the completion is handed to the loop with
``TrioToken.run_sync_soon``.

Memory.  A submitted transfer, its buffer and the one C callback stay alive
(in `_SUBMITTED`) until libusb calls back; only then is it freed.  A
transfer whose callback never comes (the handle closed under it) is leaked,
never freed under libusb's feet.
"""

from __future__ import annotations

import ctypes
import logging
import select
import struct
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import trio
import usb.backend.libusb1 as libusb1
import usb.core

from redirgate.client.usb import bulk_streams
from redirgate.proto.usbredir import Status

__all__ = [
    "BULK",
    "CONTROL",
    "INTERRUPT",
    "ISO",
    "LibusbAsync",
    "Transfer",
    "libusb_async_for",
    "packet_status",
]

log = logging.getLogger(__name__)

#: libusb_transfer_type
CONTROL, ISO, BULK, INTERRUPT = 0, 1, 2, 3
#: how long a cancelled transfer may take to call back before it is given up on (leaked)
CANCEL_GRACE_S = 2.0
#: plain libusb transfer structs kept for reuse per context (`Transfer`)
SPARE_STRUCTS = 64


# libusb_transfer_status (libusb.h) -> usbredir status, as usbredirhost.c
# libusb_status_or_error_to_redir_status (NO_DEVICE: usbredirhost also
# starts its disconnect; the engine does too)
_TRANSFER_STATUS = {
    libusb1.LIBUSB_TRANSFER_COMPLETED: Status.SUCCESS,
    libusb1.LIBUSB_TRANSFER_ERROR: Status.IOERROR,
    libusb1.LIBUSB_TRANSFER_TIMED_OUT: Status.TIMEOUT,
    libusb1.LIBUSB_TRANSFER_CANCELLED: Status.CANCELLED,
    libusb1.LIBUSB_TRANSFER_STALL: Status.STALL,
    libusb1.LIBUSB_TRANSFER_NO_DEVICE: Status.IOERROR,
    libusb1.LIBUSB_TRANSFER_OVERFLOW: Status.BABBLE,
}


def packet_status(libusb_status: int) -> Status:
    """The usbredir status of a transfer (or iso packet) libusb reports with this status."""
    return _TRANSFER_STATUS.get(int(libusb_status), Status.IOERROR)


class _PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short)]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


#: address of a submitted libusb_transfer -> its Transfer (loop thread and
#: libusb callbacks, which hold the GIL; dict operations are atomic)
_SUBMITTED: dict[int, Transfer] = {}
#: libusb_handle_events_timeout_completed's zero timeout (libusb only reads it)
_ZERO_TV = _Timeval(0, 0)
_ZERO_TV_REF = ctypes.byref(_ZERO_TV)


def _prototypes(lib: Any) -> None:
    """argtypes for the calls pyusb does not declare (set once; pyusb uses none of them)."""
    lib.libusb_get_pollfds.argtypes = [ctypes.c_void_p]
    lib.libusb_get_pollfds.restype = ctypes.POINTER(ctypes.POINTER(_PollFd))
    lib.libusb_free_pollfds.argtypes = [ctypes.POINTER(ctypes.POINTER(_PollFd))]
    lib.libusb_free_pollfds.restype = None
    lib.libusb_handle_events_timeout_completed.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(_Timeval),
        ctypes.POINTER(ctypes.c_int),
    ]
    lib.libusb_handle_events_timeout_completed.restype = ctypes.c_int
    lib.libusb_cancel_transfer.argtypes = [libusb1._libusb_transfer_p]
    lib.libusb_cancel_transfer.restype = ctypes.c_int
    lib.libusb_set_pollfd_notifiers.argtypes = [ctypes.c_void_p, _added_cb_t, _removed_cb_t, ctypes.c_void_p]
    lib.libusb_set_pollfd_notifiers.restype = None
    lib.libusb_submit_transfer.argtypes = [libusb1._libusb_transfer_p]
    lib.libusb_submit_transfer.restype = ctypes.c_int


def libusb_async_for(dev: usb.core.Device) -> LibusbAsync | None:
    """The asynchronous engine of `dev`'s libusb context, or None where there
    is none (another backend, such as client/virtual's emulated devices, or
    a libusb without pollfds): those keep the worker-thread path."""
    backend = getattr(dev, "backend", None)
    lib = libusb1._lib
    if not isinstance(backend, libusb1._LibUSB) or lib is None or not getattr(backend, "ctx", None):
        return None
    if not all(
        hasattr(lib, name)
        for name in (
            "libusb_get_pollfds",
            "libusb_free_pollfds",
            "libusb_handle_events_timeout_completed",
            "libusb_set_pollfd_notifiers",
        )
    ):
        return None
    # kept on the backend: one per libusb context, gone with it (the client
    # takes a fresh context on USB uevents, client/usb/libusb.py)
    aio: LibusbAsync | None = getattr(backend, "_redirgate_aio", None)
    if aio is None:
        try:
            _prototypes(lib)
        except AttributeError as exc:  # an unusual libusb: the thread path
            log.warning("libusb's asynchronous API is not usable (%r): transfers in worker threads", exc)
            return None
        aio = LibusbAsync(lib, backend.ctx)
        backend._redirgate_aio = aio
    return aio


class LibusbAsync:
    """One libusb context's transfers and event handling on the trio loop (see the module docstring)."""

    def __init__(self, lib: Any, ctx: Any) -> None:
        self.lib = lib
        self.ctx = ctx
        self._epoll = select.epoll()
        self._fds: dict[int, int] = {}
        #: libusb's pollfds changed since `_sync_fds` read them (set by libusb's
        #: notifiers on whatever thread opened or closed a device)
        self._dirty = True
        _NOTIFIED.add(self)
        lib.libusb_set_pollfd_notifiers(ctx, _pollfd_added, _pollfd_removed, None)
        self._pumping = False
        self._pump_free = trio.Event()
        self._loop_thread: int | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        #: completions handled by the last `handle_events`
        self.completions = 0
        #: transfers libusb called back on the loop thread, to finish once it returns
        self._finished: deque[Transfer] = deque()
        #: plain transfer structs done with, for the next `Transfer` (loop thread)
        self.spare_structs: list[Any] = []

    def bind(self) -> None:
        """Remember the loop thread and token (the first call from trio)."""
        if self._token is None:
            self._token = trio.lowlevel.current_trio_token()
            self._loop_thread = threading.get_ident()

    def _sync_fds(self) -> None:
        """Register libusb's current pollfds in the private epoll, afresh.

        Everything is registered again, not diffed: a device handle closed and
        reopened (a reset) usually gets its old fd number back, and epoll
        forgot the old file when it was closed, so an unchanged number does
        not mean a registered file."""
        lib = self.lib
        self._dirty = False
        array = lib.libusb_get_pollfds(self.ctx)
        wanted: dict[int, int] = {}
        if array:
            try:
                i = 0
                while array[i]:
                    entry = array[i].contents
                    wanted[int(entry.fd)] = int(entry.events) & 0xFFFF
                    i += 1
            finally:
                lib.libusb_free_pollfds(array)
        for fd in self._fds:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # closed (epoll dropped it) or a new file under the old number
        self._fds = {}
        for fd, events in wanted.items():
            try:
                self._epoll.register(fd, events)
            except OSError:
                # EBADF: a worker thread closed this handle's fd between
                # libusb_get_pollfds and here (seen when a channel closed on
                # the real-device harness: it ended `client run`).  libusb's
                # removed-callback marks the set dirty again; sync next time.
                self._dirty = True
                continue
            self._fds[fd] = events

    def watch(self) -> None:
        """Make sure the pump waits on every fd libusb has now: a device opened or reopened (a reset,
        in a worker thread) after the pump last read libusb's pollfds would otherwise complete its
        transfers unseen.  libusb tells of every change (`_pollfd_changed`)."""
        if self._dirty:
            self._sync_fds()

    def handle_events(self) -> None:
        """Let libusb reap what is ready, without waiting; then finish what it gave back (here, on
        the loop thread, outside libusb's callback: an error in a transfer's ``on_done`` is raised
        to the caller instead of being printed and lost by ctypes)."""
        self.completions = 0
        self.lib.libusb_handle_events_timeout_completed(self.ctx, _ZERO_TV_REF, None)
        finished = self._finished
        while finished:
            finished.popleft().finish()

    async def pump(self) -> None:
        """Handle libusb's events whenever its fds are ready, until cancelled.

        Every device session runs one; only one pumps at a time (trio allows
        one waiter per fd), the others wait to take over."""
        self.bind()
        while self._pumping:
            await self._pump_free.wait()
        self._pumping = True
        try:
            self._sync_fds()
            while True:
                if self._dirty:
                    self._sync_fds()
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                self.handle_events()
                if not self.completions:
                    # woken without a completion: someone else reaped it first (an iso OUT stream
                    # asks libusb when all its transfers are busy), libusb's event lock is held by a
                    # worker thread (a blocking call), or an fd changed (then `_dirty` says so: the
                    # fds are read again above, not on every such wake, which cost a thin client
                    # about ten system calls each time); no busy loop
                    if self._epoll.poll(0):
                        await trio.sleep(0.001)
        finally:
            self._pumping = False
            free, self._pump_free = self._pump_free, trio.Event()
            free.set()

    def deliver(self, transfer: Transfer) -> None:
        """A transfer called back (on whatever thread libusb handled events)."""
        if threading.get_ident() == self._loop_thread or self._token is None:
            self._finished.append(transfer)  # finished when libusb returns (`handle_events`)
        else:
            try:
                self._token.run_sync_soon(transfer.finish)
            except trio.RunFinishedError:
                pass  # the loop is gone: nobody waits for it


#: the contexts whose pollfd notifiers point here (one per libusb context in practice)
_NOTIFIED: weakref.WeakSet[LibusbAsync] = weakref.WeakSet()
_added_cb_t = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_short, ctypes.c_void_p)
_removed_cb_t = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p)


@_added_cb_t
def _pollfd_added(fd: int, events: int, user_data: Any) -> None:
    for context in list(_NOTIFIED):
        context._dirty = True


@_removed_cb_t
def _pollfd_removed(fd: int, user_data: Any) -> None:
    for context in list(_NOTIFIED):
        context._dirty = True


@libusb1._libusb_transfer_cb_fn_p
def _on_complete(transfer_p: Any) -> None:
    """libusb's callback for every transfer made here (inside libusb_handle_events*)."""
    transfer = _SUBMITTED.pop(ctypes.addressof(transfer_p.contents), None)
    if transfer is None:
        return
    contents = transfer_p.contents
    transfer.status = int(contents.status)
    transfer.actual_length = int(contents.actual_length)
    if contents.num_iso_packets:
        transfer.iso_results = [(int(p.status), int(p.actual_length)) for p in libusb1._get_iso_packet_list(contents)]
    transfer.aio.completions += 1
    transfer.aio.deliver(transfer)


class Transfer:
    """One libusb transfer over a caller's buffer; `finished` (and `done`, made when first asked
    for) are set on the loop thread when libusb calls back.

    `buffer` must expose a writable buffer (bytearray, array) and stays
    referenced here until the callback: for IN, the reply's payload is read
    from it; for OUT it is the request's own copy of the guest's data.

    Per-transfer costs are kept off the path (a thin client's CPU is the
    bottleneck on a real device, issue 13): the trio Event exists only if
    someone waits on it (`done`), the plain (not iso, not stream) libusb
    structs are reused (`LibusbAsync` keeps up to `SPARE_STRUCTS` of them),
    and a transfer made with ``keep=True`` (an iso OUT stream's) is
    submitted again and again over its buffer until `close`."""

    __slots__ = (
        "_buf_ref",
        "_c_buffer",
        "_event",
        "_keep",
        "_pooled",
        "actual_length",
        "aio",
        "finished",
        "iso_results",
        "on_done",
        "owner",
        "ptr",
        "status",
        "submitted",
    )

    def __init__(
        self,
        aio: LibusbAsync,
        handle: Any,
        kind: int,
        endpoint: int,
        buffer: Any,
        length: int,
        timeout_ms: int,
        *,
        iso_packets: int = 0,
        packet_size: int = 0,
        owner: object = None,
        stream_id: int = 0,
        keep: bool = False,
    ) -> None:
        self.aio = aio
        self.owner = owner
        self._event: trio.Event | None = None
        self.finished = False
        self.status = -1
        self.actual_length = 0
        #: iso: (libusb status, actual length) per packet, copied in the callback
        self.iso_results: list[tuple[int, int]] = []
        #: called on the loop thread once `finished` is set (e.g. to wake a stream's task)
        self.on_done: Callable[[], None] | None = None
        self.submitted = False
        self._keep = keep
        self._buf_ref = buffer
        self._c_buffer = (ctypes.c_char * max(len(buffer), 1)).from_buffer(buffer) if len(buffer) else None
        #: a plain struct: back to the spares when done (a stream id or iso packets stay with their struct)
        self._pooled = not iso_packets and not stream_id
        spare = aio.spare_structs
        if self._pooled and spare:
            self.ptr = spare.pop()
        else:
            self.ptr = aio.lib.libusb_alloc_transfer(iso_packets)
            if not self.ptr:
                raise MemoryError(f"libusb_alloc_transfer({iso_packets}) failed")
        t = self.ptr.contents
        t.dev_handle = handle
        t.flags = 0
        t.endpoint = endpoint
        t.type = kind
        t.timeout = timeout_ms
        t.length = length
        t.callback = _on_complete
        t.buffer = ctypes.addressof(self._c_buffer) if self._c_buffer is not None else None
        t.num_iso_packets = iso_packets
        if iso_packets:
            aio.lib.libusb_set_iso_packet_lengths(self.ptr, packet_size)
        if stream_id:  # a USB 3 bulk stream (client/usb/bulk_streams.py)
            bulk_streams.mark_stream(self.ptr, stream_id)

    @property
    def done(self) -> trio.Event:
        """A trio Event set when libusb has called back (made on first use: most transfers are
        answered from `on_done` and never waited on)."""
        event = self._event
        if event is None:
            event = self._event = trio.Event()
            if self.finished:
                event.set()
        return event

    @property
    def buffer(self) -> Any:
        """The caller's buffer the transfer reads into or writes from."""
        return self._buf_ref

    def set_iso_lengths(self, lengths: list[int]) -> None:
        """Each iso packet's own length (packet i sits at offset i * packet_size of the buffer)."""
        packets = libusb1._get_iso_packet_list(self.ptr.contents)
        for descriptor, length in zip(packets, lengths, strict=False):
            descriptor.length = length

    def submit(self) -> None:
        """Hand it to libusb (loop thread); usb.core.USBError as pyusb raises it when libusb refuses.
        A kept transfer may be submitted again once it has finished."""
        aio = self.aio
        if aio._token is None:
            aio.bind()
        aio.watch()
        self.finished = False
        self._event = None
        address = ctypes.addressof(self.ptr.contents)
        _SUBMITTED[address] = self
        rc = aio.lib.libusb_submit_transfer(self.ptr)
        if rc < 0:
            del _SUBMITTED[address]
            if not self._keep:
                self._free()
            libusb1._check(rc)
        self.submitted = True

    def cancel(self) -> None:
        """Ask libusb to cancel it (it still calls back, with CANCELLED or what arrived first)."""
        if self.submitted and not self.finished:
            self.aio.lib.libusb_cancel_transfer(self.ptr)

    def finish(self) -> None:
        """On the loop thread after the callback: free (or keep) the libusb struct, wake the waiter."""
        if not self._keep:
            self._free()
        self.finished = True
        self.submitted = False
        if self._event is not None:
            self._event.set()
        if self.on_done is not None:
            self.on_done()

    def close(self) -> None:
        """A kept transfer is not needed any more: its struct is freed now, or when libusb gives it
        back if it is in flight."""
        self._keep = False
        if not self.submitted:
            self._free()

    def _free(self) -> None:
        ptr = self.ptr
        if ptr is not None:
            self.ptr = None
            spare = self.aio.spare_structs
            if self._pooled and len(spare) < SPARE_STRUCTS:
                spare.append(ptr)
            else:
                self.aio.lib.libusb_free_transfer(ptr)

    def data(self, offset: int = 0) -> memoryview:
        """What an IN transfer brought: a view of its buffer (no copy)."""
        return memoryview(self._buf_ref)[offset : offset + self.actual_length]


def control_setup(buffer: bytearray, requesttype: int, request: int, value: int, index: int, length: int) -> None:
    """The 8-byte setup packet at the start of a control transfer's buffer (libusb_fill_control_setup)."""
    struct.pack_into("<BBHHH", buffer, 0, requesttype, request, value, index, length)


async def drain(aio: LibusbAsync, owner: object) -> None:
    """Cancel every transfer of `owner` and wait until libusb called them all back (or gave up, bounded)."""
    mine = [t for t in list(_SUBMITTED.values()) if t.owner is owner]
    for transfer in mine:
        transfer.cancel()
    with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_GRACE_S):
        while any(not t.finished for t in mine):
            aio.handle_events()
            await trio.sleep(0.002)
