"""The VM side of the emulated loopback device (`virtual:loopback`) kept busy: bulk OUT then IN
of a fresh pattern, round after round, each checked byte by byte (the resume fault tests)."""

from __future__ import annotations

import os

from redirgate.vmside.guest import UsbredirGuest
from tests.support.waiting import until

__all__ = ["BULK_IN", "BULK_OUT", "Loopback"]

BULK_OUT, BULK_IN = 0x01, 0x81


class Loopback:
    """Bulk OUT then IN of a fresh pattern, again and again, each round checked byte by byte."""

    def __init__(self, vm: UsbredirGuest) -> None:
        self.vm = vm
        self.rounds = 0
        self.stop = False
        #: bytes per round each way (a test may raise it)
        self.size = 8192

    async def run(self) -> None:
        while not self.stop:
            size = self.size
            data = os.urandom(size + self.rounds % 512)
            status, sent = await self.vm.bulk(BULK_OUT, data=data)
            assert (status, sent) == (0, len(data))
            got = b""
            while len(got) < len(data):
                status, chunk = await self.vm.bulk(BULK_IN, len(data) - len(got))
                assert status == 0 and isinstance(chunk, bytes)
                got += chunk
            assert got == data, f"round {self.rounds}: the loopback returned other bytes"
            self.rounds += 1

    async def progress(self, rounds: int = 3) -> None:
        """Wait until `rounds` more rounds went through."""
        target = self.rounds + rounds
        await until(lambda: self.rounds >= target, "loopback rounds")
