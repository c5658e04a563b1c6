"""The host-root guest (`redirgate.cli.guestvm.hostroot`): the host's programs in a QEMU guest, driven by an agent.

One guest for the module: it runs this checkout's venv python, jobs run
concurrently and report stdout/stderr/status, files in the share are the
same path on both sides, a host forward reaches a guest listener and the
guest reaches the host's loopback as 10.0.2.2, and the monitor answers.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from redirgate.cli.guestvm.hostroot import AgentError, HostRootGuest, build_hostroot_guest, start_hostroot_guest
from tests.support.guest import guest_unavailable_reason
from tests.support.system import require

GUEST_PORT = 7000
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hostroot() -> Iterator[HostRootGuest]:
    reason = guest_unavailable_reason()
    require("QEMU test guest", reason is None, reason or "")
    with start_hostroot_guest(hostfwd=[GUEST_PORT], guest=build_hostroot_guest()) as guest:
        yield guest


@pytest.mark.system
def test_runs_this_checkout_with_its_venv(hostroot: HostRootGuest) -> None:
    result = hostroot.run(
        f"cd {REPO} && uname -r && {sys.executable} -c 'import redirgate.cli, sys; print(redirgate.cli.__file__, sys.prefix)'"
    )
    kernel, where = result.stdout.split("\n", 1)
    assert (Path("/lib/modules") / kernel.strip() / "modules.dep").is_file()  # the host's kernel, its modules
    assert where.split()[0].startswith(str(REPO))
    assert where.split()[1] == sys.prefix


@pytest.mark.system
def test_jobs_report_status_and_output_and_run_concurrently(hostroot: HostRootGuest) -> None:
    share = hostroot.share_dir("jobs")
    # The first job waits for a file only the second one writes: they must overlap.
    first = hostroot.start(f"while [ ! -e {share}/go ]; do sleep 0.1; done; echo first; echo oops >&2; exit 3")
    second = hostroot.run(f"touch {share}/go; echo second")
    assert second.stdout == "second\n"
    result = first.wait()
    assert (result.rc, result.stdout, result.stderr) == (3, "first\n", "oops\n")
    with pytest.raises(AgentError, match="exited 3"):
        result.check()


@pytest.mark.system
def test_share_is_the_same_path_both_ways(hostroot: HostRootGuest) -> None:
    share = hostroot.share_dir("files")
    (share / "from-host").write_bytes(bytes(range(256)))
    hostroot.run(f"cat {share}/from-host > {share}/from-guest; echo guest > {share}/note")
    assert (share / "from-guest").read_bytes() == bytes(range(256))
    assert (share / "note").read_text() == "guest\n"


@pytest.mark.system
def test_network_both_ways(hostroot: HostRootGuest) -> None:
    # host -> guest through the forward
    log = hostroot.share / "server.log"
    server = hostroot.spawn(
        f"{sys.executable} -u -c \"import socket; s = socket.create_server(('0.0.0.0', {GUEST_PORT})); "
        "print('listening'); c = s.accept()[0]; c.sendall(c.recv(100).upper())\"",
        log,
    )
    try:
        hostroot.run(f"until grep -q listening {log}; do sleep 0.1; done")
        with socket.create_connection(("127.0.0.1", hostroot.host_port(GUEST_PORT))) as conn:
            conn.sendall(b"ping")
            assert conn.recv(100) == b"PING"
    finally:
        hostroot.signal(server, "KILL")
    # guest -> host loopback as 10.0.2.2
    with socket.create_server(("127.0.0.1", 0)) as listener:
        job = hostroot.start(
            f"{sys.executable} -c \"import socket; socket.create_connection(('10.0.2.2', "
            f"{listener.getsockname()[1]})).sendall(b'hello host')\""
        )
        conn, _ = listener.accept()
        with conn:
            assert conn.recv(100) == b"hello host"
        job.wait().check()


@pytest.mark.system
def test_monitor_answers(hostroot: HostRootGuest) -> None:
    assert "hostfwd" in hostroot.hmp("info network") or "user" in hostroot.hmp("info network")
    assert hostroot.hmp("info status").startswith("VM status: running")
