"""One task that reads many quiet connections: `QuietReader`.

An idle control session receives one small message per heartbeat interval.
Waking its own task for it (trio's epoll re-armed, the task's coroutine
chain resumed and suspended again, a would-block read on the way back) costs
several times what reading and answering the message costs.  A session whose
read loop has nothing to do parks here instead (`park`): its socket joins
this reader's own epoll set, and while the socket has something to read the
reader calls the session's `readable()` on the reader's task.  `readable()`
reads and handles what it can without waiting (a heartbeat: answered) and
returns True to stay parked, or False to hand over to its own task, which
then resumes where it parked (anything else arrived, the peer closed, an
error).  The registration is level-triggered and stays while the session is
parked, so a quiet session costs no system call of its own per message but
the read and the write.

Cancelling a parked task unparks it (its socket leaves the set).  When the
reader stops, every parked task resumes (and waits on its own from then on).
`readable()` must not wait and should not raise; an exception it raises is
delivered to the parked task instead.

Threads: none; `run` is one task on the owner's trio loop and `park` is
awaited by tasks on that loop.
"""

from __future__ import annotations

import select
from collections.abc import Callable

import outcome
import trio

__all__ = ["QuietReader"]

#: Sockets handled per wake-up of the reader before it lets other tasks run.
BATCH = 256


class QuietReader:
    """Many parked readers on one task (see the module docstring); `run` must be
    running for `park` to be used (`running`)."""

    __slots__ = ("_epoll", "_parked", "handed_over", "handled", "running")

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        #: fd -> (the parked task, its readable())
        self._parked: dict[int, tuple[trio.lowlevel.Task, Callable[[], bool]]] = {}
        self.running = False
        #: readable() calls that kept their session parked / that handed over to its task
        self.handled = 0
        self.handed_over = 0

    def __len__(self) -> int:
        return len(self._parked)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The reader's task, until cancelled; started (`nursery.start`) once `running`."""
        if self.running or self._epoll is not None:
            raise RuntimeError("QuietReader.run runs once")
        self._epoll = epoll = select.epoll()
        self.running = True
        task_status.started()
        try:
            parked = self._parked
            while True:
                await trio.lowlevel.wait_readable(epoll)
                for fd, _events in epoll.poll(0, BATCH):
                    entry = parked.get(fd)
                    if entry is None:
                        continue
                    task, readable = entry
                    try:
                        stay = readable()
                    except Exception as exc:  # the parked task raises it
                        if parked.get(fd) is entry:
                            self._release(fd, task, outcome.Error(exc))
                        continue
                    if parked.get(fd) is not entry:
                        continue  # readable() ended the task's session: cancelled, unparked already
                    if stay:
                        self.handled += 1
                    else:
                        self.handed_over += 1
                        self._release(fd, task, outcome.Value(None))
        finally:
            self.running = False
            for fd, (task, _readable) in list(self._parked.items()):
                self._release(fd, task, outcome.Value(None))
            trio.lowlevel.notify_closing(epoll)
            epoll.close()

    async def park(self, fd: int, readable: Callable[[], bool]) -> None:
        """Until `readable()` (called on the reader's task while `fd` is readable) returns
        False, or the reader stops; a checkpoint (cancellation unparks)."""
        epoll = self._epoll
        if not self.running or epoll is None:
            await trio.lowlevel.checkpoint()
            return
        if fd in self._parked:
            raise RuntimeError(f"QuietReader.park: descriptor {fd} is parked already")
        epoll.register(fd, select.EPOLLIN)
        self._parked[fd] = (trio.lowlevel.current_task(), readable)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._forget(fd)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _forget(self, fd: int) -> None:
        self._parked.pop(fd, None)
        if self._epoll is not None and not self._epoll.closed:
            try:
                self._epoll.unregister(fd)
            except OSError:  # closed meanwhile: the kernel dropped it from the set already
                pass

    def _release(self, fd: int, task: trio.lowlevel.Task, result: outcome.Outcome[None]) -> None:
        self._forget(fd)
        trio.lowlevel.reschedule(task, result)
