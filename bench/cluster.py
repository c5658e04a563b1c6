"""Several gateways as one (issue 18): attach through another node, and failover.

Three ``redirgate gateway run`` processes (nodes a, b, c) on one
``redis-server`` started here on a free loopback port, and one
``redirgate client run`` exporting ``virtual:loopback``, its configured
gateway node c; the VM side is our ``UsbredirGuest`` on a route port.

* **attach**: from the VM's TCP connect to the device announced and one
  GET_DESCRIPTOR answered, through node c (the client's own node: the
  single-gateway path) and through node a (A asks C over Redis, the client
  dials A), interleaved round by round under the same load; before each
  round the client's device is free again (node c's admin status says so);
* **failover**: SIGKILL the node holding the client, time until another
  node's admin status lists it; the killed node is started again on its
  ports before the next round.

    python bench/cluster.py [--quick] [--runs N]

Every process started here is stopped by PID in a ``finally``; nothing is
asserted.  The Redis server and the cluster configs are the test suite's
helpers (tests/support), so this module imports ``tests.support``.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: not bench/ itself
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.relay_setup import machine
from bench.report import emit, script_arguments
from redirgate.cli.lab import LabRoute, make_pki, write_client_config
from redirgate.gateway.admin import read_status
from redirgate.vmside.guest import UsbredirGuest
from tests.support.cluster_lab import cluster_config
from tests.support.gateway_procs import GatewayProcess, kill, running_client, running_gateway
from tests.support.redis_server import running_redis

ROUTES = [LabRoute("loop", "usb:1209:0003")]
NODES = ("a", "b", "c")
ROUND_TIMEOUT_S = 60.0


def _online(directory: Path, node: str) -> dict[str, Any] | None:
    """The client's entry in `node`'s admin status, None if it is not there (or the node is down)."""
    try:
        status = read_status(directory / f"{node}.sock", timeout_s=2.0)
    except (OSError, ValueError, RuntimeError):
        return None
    for client in status.get("clients", []):
        if client["identity"] == "thin-01":
            return dict(client)
    return None


async def _wait(predicate: Any, what: str) -> None:
    with trio.fail_after(ROUND_TIMEOUT_S):
        while not await trio.to_thread.run_sync(predicate):  # noqa: ASYNC110 - another process's state
            await trio.sleep(0.02)  # no event announces it


async def _attach(port: int) -> float:
    started = trio.current_time()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream, UsbredirGuest(stream, peer="bench vm", version="redirgate bench") as vm:
        await vm.wait_device()
        status, data = await vm.control(0x80, 6, 0x100, 0, 18)
        took = trio.current_time() - started
        if status != 0 or len(data) != 18:
            raise RuntimeError(f"GET_DESCRIPTOR failed: status {status}")
    return took


def _free(directory: Path, holder: str) -> bool:
    client = _online(directory, holder)
    return client is not None and all(not d["busy"] for d in client["devices"])


async def _measure(directory: Path, rounds: int, failovers: int) -> dict[str, Any]:
    make_pki(directory)
    result: dict[str, Any] = {"attach_own_s": [], "attach_other_s": [], "failover_s": []}
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(running_redis(directory / "redis"))
        nodes: dict[str, GatewayProcess] = {}
        scopes: dict[str, contextlib.ExitStack] = {}

        def start(name: str, tunnel_port: int = 0, route_port: int = 0) -> None:
            routes = [LabRoute("loop", "usb:1209:0003", listen=f"127.0.0.1:{route_port}")]
            config = cluster_config(
                directory, routes, name, redis.url, tunnel_listen=f"127.0.0.1:{tunnel_port}", metrics=False
            )
            scope = scopes[name] = stack.enter_context(contextlib.ExitStack())
            nodes[name] = scope.enter_context(running_gateway(config, directory / f"{name}.log", options=()))

        for name in NODES:
            start(name)
        client_config = write_client_config(directory, nodes["c"].tunnel_port, virtual=["virtual:loopback"])
        stack.enter_context(running_client(client_config, directory / "client.log"))
        holder = "c"
        await _wait(lambda: _free(directory, "c"), "client online on c")
        for _ in range(rounds):
            for key, node in (("attach_own_s", holder), ("attach_other_s", "a" if holder != "a" else "b")):
                await _wait(lambda: _free(directory, holder), "device free")
                with trio.fail_after(ROUND_TIMEOUT_S):
                    result[key].append(await _attach(nodes[node].routes["loop"]))
        for _ in range(failovers):
            gone = holder
            ports = (nodes[gone].tunnel_port, nodes[gone].routes["loop"])
            killed = time.monotonic()
            kill(nodes[gone].process)
            others = [n for n in NODES if n != gone]
            found: list[str] = []

            def moved(others: list[str] = others, found: list[str] = found) -> bool:
                for name in others:
                    if _online(directory, name) is not None:
                        found.append(name)
                        return True
                return False

            await _wait(moved, "client on another node")
            result["failover_s"].append(time.monotonic() - killed)
            holder = found[0]
            scopes[gone].close()
            start(gone, *ports)
    return result


def run(quick: bool, *, runs: int | None = None) -> dict[str, Any]:
    rounds = runs or (10 if quick else 40)
    failovers = 3 if quick else 10
    with tempfile.TemporaryDirectory(prefix="redirgate-bench-cluster-") as tmp:
        result = trio.run(_measure, Path(tmp), rounds, failovers)
    result.update(machine=machine(), quick=quick, rounds=rounds, failovers=failovers)
    return result


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Three gateway processes on one redis-server, one client (virtual:loopback), {result['rounds']} "
        f"attach rounds interleaved, {result['failovers']} failovers",
        f"{'':44}{'p50 ms':>10}{'p99 ms':>10}{'min ms':>10}{'max ms':>10}",
    ]
    for key, label in (
        ("attach_own_s", "attach through the client's node"),
        ("attach_other_s", "attach through another node"),
        ("failover_s", "client online elsewhere after a node kill"),
    ):
        values = result[key]
        if not values:
            lines.append(f"{label:44}{'missing':>10}")
            continue
        cells = [statistics.median(values), _pct(values, 0.99), min(values), max(values)]
        lines.append(f"{label:44}" + "".join(f"{v * 1e3:10.1f}" for v in cells))
    own, other = result["attach_own_s"], result["attach_other_s"]
    if own and other:
        extra = (statistics.median(other) - statistics.median(own)) * 1e3
        lines.append(f"another node adds {extra:.1f} ms to the attach (p50; issue 18's floor: <= 10 ms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = script_arguments(__doc__, "10 attach rounds and 3 failovers instead of 40 and 10").parse_args(argv)
    emit(run(args.quick, runs=args.runs), table, args.json)


if __name__ == "__main__":
    main()
