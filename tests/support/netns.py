"""Two network namespaces joined by a veth pair, with nftables drop rules (issue 16's fault tests).

This kernel has netns, veth and nf_tables but no netem, so a black hole is
an nft rule that drops what one namespace receives from the other:

    with netns_pair() as pair:
        listener = pair.socket("b")               # a socket created inside namespace b
        listener.bind((pair.address("b"), 0))
        client = pair.socket("a")                 # ...and one inside a, dialling b over the veth
        pair.drop()                               # b drops everything from a (counted)
        pair.dropped()                            # packets dropped so far
        pair.undrop()                             # traffic passes again (TCP retransmits)

`socket(side)` creates the socket in a short-lived thread that entered the
namespace with setns(2): a socket belongs to the namespace it was created
in for its whole life, so the test's own trio code can then use it
(`trio.socket.from_stdlib_socket`).  Namespaces and links are deleted in
`finally`, even when the test fails.  Needs root, `ip` (iproute2) and `nft`
(nftables); tests/setup-system.sh installs both.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["NetnsPair", "netns_pair"]

_CLONE_NEWNET = 0x40000000
_TABLE = "redirgate_fault"
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def _run(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@dataclass
class NetnsPair:
    """Namespaces `names["a"]`, `names["b"]`; veth ends with /30 addresses."""

    names: dict[str, str]
    addresses: dict[str, str]

    def address(self, side: str) -> str:
        return self.addresses[side]

    def run(self, side: str, *argv: str, stdin: str | None = None) -> str:
        """Run a program inside namespace `side`; its stdout (RuntimeError on failure)."""
        return _run("ip", "netns", "exec", self.names[side], *argv, stdin=stdin)

    def socket(self, side: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A new IPv4 socket that lives in namespace `side`."""
        result: list[socket.socket | BaseException] = []

        def enter_and_create() -> None:
            try:
                fd = os.open(f"/run/netns/{self.names[side]}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns into {self.names[side]}: {os.strerror(err)}")
                finally:
                    os.close(fd)
                result.append(socket.socket(socket.AF_INET, kind))
            except BaseException as exc:  # handed to the caller's thread below
                result.append(exc)

        # A thread of its own: setns changes only the calling thread, and this one ends here.
        worker = threading.Thread(target=enter_and_create, name=f"netns-{side}")
        worker.start()
        worker.join()
        made = result[0]
        if isinstance(made, BaseException):
            raise made
        return made

    def drop(self) -> None:
        """Namespace b drops (and counts) every packet from a, both ways of every flow."""
        rules = f"""
        table inet {_TABLE} {{
            chain input {{ type filter hook input priority 0; policy accept; ip saddr {self.addresses["a"]} counter drop; }}
            chain output {{ type filter hook output priority 0; policy accept; ip daddr {self.addresses["a"]} counter drop; }}
        }}
        """
        self.run("b", "nft", "-f", "-", stdin=rules)

    def undrop(self) -> None:
        self.run("b", "nft", "delete", "table", "inet", _TABLE)

    def dropped(self) -> int:
        """Packets the drop rules have dropped so far (0 without rules)."""
        try:
            listing = self.run("b", "nft", "list", "table", "inet", _TABLE)
        except RuntimeError:
            return 0
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))


@contextmanager
def netns_pair() -> Iterator[NetnsPair]:
    """A fresh pair of namespaces joined by veth, deleted on exit."""
    n = next(_counter)
    tag = f"rg{os.getpid() % 100000}x{n}"
    names = {"a": f"{tag}a", "b": f"{tag}b"}
    # 10.213.X.Y/30, distinct per pair inside this process: one subnet per pair
    base = 4 * (n % 64)
    addresses = {"a": f"10.213.{os.getpid() % 250}.{base + 1}", "b": f"10.213.{os.getpid() % 250}.{base + 2}"}
    made: list[str] = []
    try:
        for side in ("a", "b"):
            _run("ip", "netns", "add", names[side])
            made.append(names[side])
        _run(
            "ip",
            "link",
            "add",
            f"{tag}va",
            "netns",
            names["a"],
            "type",
            "veth",
            "peer",
            "name",
            f"{tag}vb",
            "netns",
            names["b"],
        )
        pair = NetnsPair(names, addresses)
        for side, dev in (("a", f"{tag}va"), ("b", f"{tag}vb")):
            pair.run(side, "ip", "addr", "add", f"{addresses[side]}/30", "dev", dev)
            pair.run(side, "ip", "link", "set", dev, "up")
            pair.run(side, "ip", "link", "set", "lo", "up")
        yield pair
    finally:
        for name in reversed(made):  # deleting a namespace deletes its veth end, and so the pair
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
