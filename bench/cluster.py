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
* **failover of many** (full runs, or ``--many N``; issue 18's floor: a node's failure brings its
  clients back on another node within 5 s, p99, 1,000 clients): N
  simulated clients (``bench/scale_peers.py``, the scale bench's cached
  PKI, the real client's reconnect policy and turn through the listed
  nodes) in two processes, all on one node; SIGKILL that node, then each
  client's time from the kill to its hello answered by another node (its
  own clock); p50, p99 and max per kill, the killed node started again
  before the next one; with the survivors' and load generators' CPU until
  all were back (work against waiting), where the clients landed, and
  when their TLS handshakes were done (the rest is the hello's wait).
* **idle** (``--idle N``, alone): N simulated idle clients on node c
  (heartbeat_s = 2): Redis commands a second (all three nodes), node c's
  and redis-server's CPU, over three 10 s windows: what presence costs.

    python bench/cluster.py [--quick] [--runs N] [--many N] [--idle N]

Every process started here is stopped by PID in a ``finally``; nothing is
asserted.  The Redis server and the cluster configs are the test suite's
helpers (tests/support), so this module imports ``tests.support``.
"""

from __future__ import annotations

import collections
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

from bench.relay_setup import machine, process_cpu_s
from bench.report import emit, script_arguments
from redirgate.cli.lab import LabRoute, make_pki, write_client_config
from redirgate.gateway.admin import read_status
from redirgate.gateway.cluster.redis import RedisUrl, open_redis
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


# ------------------------------------------- failover of many: N simulated clients on the killed node
MANY = 1000
MANY_PROCS = 2
FAILOVER_FLOOR_S = 5.0


def _cpu(pids: list[int]) -> list[float]:
    return [process_cpu_s(pid) for pid in pids]


def _failover_many(directory: Path, n: int, kills: int) -> dict[str, Any]:
    """N simulated clients on one node of three; each kill: every client's time back (see the docstring)."""
    from bench.relay_setup import Processes
    from bench.scale import PEERS, Peer, ensure_pki

    pki_base, _, _ = ensure_pki(n)
    directory.mkdir()
    (directory / "pki").symlink_to(pki_base)
    result: dict[str, Any] = {"many_n": n, "many_p50_s": [], "many_p99_s": [], "many_max_s": [], "many_notes": []}
    result.update(many_landed=[], many_attempts=[], many_hints=[], many_abandoned=[])
    result.update(many_tls_p50_s=[], many_tls_p99_s=[], many_cpu=[])
    procs = Processes(directory)
    with contextlib.ExitStack() as stack:
        stack.callback(procs.stop_all)
        redis = stack.enter_context(running_redis(directory / "redis"))
        nodes: dict[str, GatewayProcess] = {}
        scopes: dict[str, contextlib.ExitStack] = {}

        def start(name: str, tunnel_port: int = 0) -> None:
            # the simulated clients all come from 127.0.0.1: the per-source handshake bound is the site's
            config = cluster_config(
                directory,
                [],
                name,
                redis.url,
                tunnel_listen=f"127.0.0.1:{tunnel_port}",
                max_handshakes_per_source=256,
            )
            scope = scopes[name] = stack.enter_context(contextlib.ExitStack())
            log = directory / f"{name}.log"
            nodes[name] = scope.enter_context(running_gateway(config, log, options=(), nofile=n + 1024))

        for name in NODES:
            start(name)
        order = ["c", "a", "b"]  # every client's list: the first is where they all start
        share = [n // MANY_PROCS + (i < n % MANY_PROCS) for i in range(MANY_PROCS)]
        peers, first = [], 0
        for i, count in enumerate(share):
            argv = [sys.executable, str(PEERS), "clients", "--port", str(nodes["c"].tunnel_port), "--more-ports"]
            argv += [str(nodes[x].tunnel_port) for x in order[1:]]
            argv += ["--pki", str(directory / "pki"), "--first", str(first), "--count", str(count)]
            argv += ["--connect-concurrency", "32", "--connect-timeout-s", str(120 + n * 0.1)]
            peers.append(Peer(procs, f"loadgen{i}", argv))
            first += count
        for peer in peers:
            peer.read(60.0 + n * 0.01)

        def ask_all(line: str, timeout_s: float) -> list[dict[str, Any]]:
            for peer in peers:
                stdin = peer.proc.popen.stdin
                assert stdin is not None
                stdin.write(line.encode() + b"\n")
                stdin.flush()
            return [peer.read(timeout_s) for peer in peers]

        for peer, count in zip(peers, share, strict=True):
            assert peer.proc.popen.stdin is not None
            peer.proc.popen.stdin.write(f"connect {count}\n".encode())
            peer.proc.popen.stdin.flush()
        online = sum(peer.read(150 + n * 0.1)["online"] for peer in peers)
        if online < n:
            result["many_notes"].append(f"only {online} of {n} online before the first kill")
        holder = "c"
        by_port = {nodes[name].tunnel_port: name for name in NODES}
        for _ in range(kills):
            time.sleep(2.0)  # a settled cluster: every client's key in Redis
            port = nodes[holder].tunnel_port
            marked = sum(m["marked"] for m in ask_all(f"restart-mark {port}", 30))
            result["many_marked"] = [*result.get("many_marked", []), marked]
            survivors = [nodes[name].process.pid for name in NODES if name != holder]
            cpu_before = _cpu([*survivors, *(peer.proc.pid for peer in peers)])
            kill(nodes[holder].process)
            started = time.monotonic()
            while True:
                time.sleep(0.5)
                answers = ask_all("back", 60)
                back = sorted(b for a in answers for b in a["back"])
                if len(back) >= marked or time.monotonic() - started > 120:
                    break
            # the CPU the survivors and the load generators spent from the kill until the last one was back
            # (measured at the look that found them all: at most 0.5 s late): work, against waiting
            cpu_after = _cpu([*survivors, *(peer.proc.pid for peer in peers)])
            spent = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
            result["many_cpu"].append(
                {"wall_s": time.monotonic() - started, "survivors_s": sum(spent[:2]), "loadgens_s": sum(spent[2:])}
            )
            landed: collections.Counter[str] = collections.Counter()
            for answer in answers:
                landed.update({by_port.get(int(p), p): k for p, k in answer["landed"].items()})
            result["many_landed"].append(dict(sorted(landed.items())))
            for key in ("attempts", "hints", "abandoned"):
                result[f"many_{key}"].append(sum(a[key] for a in answers))
            if len(back) < marked:
                result["many_notes"].append(f"only {len(back)} of {marked} back within 120 s of killing {holder}")
            back_tls = sorted(b for a in answers for b in a["back_tls"])
            if back_tls:  # the same clients' TLS handshakes done (the rest until back: their hellos)
                result["many_tls_p50_s"].append(back_tls[len(back_tls) // 2])
                result["many_tls_p99_s"].append(back_tls[min(len(back_tls) - 1, len(back_tls) * 99 // 100)])
            if back:
                result["many_p50_s"].append(back[len(back) // 2])
                result["many_p99_s"].append(back[min(len(back) - 1, len(back) * 99 // 100)])
                result["many_max_s"].append(back[-1])
            scopes[holder].close()
            start(holder, port)
            holder = order[(order.index(holder) + 1) % len(order)]  # where the clients went: their next port
        try:
            ask_all("quit", 10)  # no answer: they end
        except RuntimeError:
            pass
    return result


# ------------------------------------------- idle clients: what presence costs Redis and the node
IDLE_WINDOWS = 3
IDLE_WINDOW_S = 10.0


def _redis_commands(url: str) -> int:
    """Redis's total_commands_processed (INFO stats), on a connection of its own."""

    async def ask() -> int:
        async with open_redis(RedisUrl.parse(url)) as redis:
            info = await redis.command("INFO", "stats")
        assert isinstance(info, bytes)
        for line in info.decode().splitlines():
            if line.startswith("total_commands_processed:"):
                return int(line.split(":", 1)[1])
        raise RuntimeError("INFO stats without total_commands_processed")

    return trio.run(ask)


def _idle(directory: Path, n: int) -> dict[str, Any]:
    """N simulated idle clients on node c of three (the default heartbeat_s = 2, node_timeout_s = 6):
    over IDLE_WINDOWS windows of IDLE_WINDOW_S, Redis commands a second (all nodes) and node c's and
    redis-server's CPU, % of one core."""
    from bench.relay_setup import Processes
    from bench.scale import PEERS, Peer, ensure_pki

    pki_base, _, _ = ensure_pki(n)
    directory.mkdir()
    (directory / "pki").symlink_to(pki_base)
    result: dict[str, Any] = {"idle_n": n, "idle_cmds_per_s": [], "idle_node_cpu_pct": [], "idle_redis_cpu_pct": []}
    procs = Processes(directory)
    with contextlib.ExitStack() as stack:
        stack.callback(procs.stop_all)
        redis = stack.enter_context(running_redis(directory / "redis"))
        assert redis.process is not None
        nodes: dict[str, GatewayProcess] = {}
        for name in NODES:
            config = cluster_config(
                directory, [], name, redis.url, heartbeat_s=2.0, node_timeout_s=6.0, max_handshakes_per_source=256
            )
            nodes[name] = stack.enter_context(
                running_gateway(config, directory / f"{name}.log", options=(), nofile=n + 1024)
            )
        share = [n // MANY_PROCS + (i < n % MANY_PROCS) for i in range(MANY_PROCS)]
        peers, first = [], 0
        for i, count in enumerate(share):
            argv = [sys.executable, str(PEERS), "clients", "--port", str(nodes["c"].tunnel_port)]
            argv += ["--pki", str(directory / "pki"), "--first", str(first), "--count", str(count)]
            argv += ["--connect-concurrency", "32", "--connect-timeout-s", str(120 + n * 0.1)]
            peers.append(Peer(procs, f"idlegen{i}", argv))
            first += count
        for peer in peers:
            peer.read(60.0 + n * 0.01)
        for peer, count in zip(peers, share, strict=True):
            assert peer.proc.popen.stdin is not None
            peer.proc.popen.stdin.write(f"connect {count}\n".encode())
            peer.proc.popen.stdin.flush()
        online = sum(peer.read(150 + n * 0.1)["online"] for peer in peers)
        result["idle_online"] = online
        time.sleep(8.0)  # settled: every client written, a few heartbeats gone by
        node_pid, redis_pid = nodes["c"].process.pid, redis.process.pid
        for _ in range(IDLE_WINDOWS):
            commands, node_cpu, redis_cpu = (
                _redis_commands(redis.url),
                process_cpu_s(node_pid),
                process_cpu_s(redis_pid),
            )
            started = time.monotonic()
            time.sleep(IDLE_WINDOW_S)
            wall = time.monotonic() - started
            # the look at INFO itself is one command of the window
            result["idle_cmds_per_s"].append((_redis_commands(redis.url) - commands - 1) / wall)
            result["idle_node_cpu_pct"].append((process_cpu_s(node_pid) - node_cpu) / wall * 100)
            result["idle_redis_cpu_pct"].append((process_cpu_s(redis_pid) - redis_cpu) / wall * 100)
    return result


def run(quick: bool, *, runs: int | None = None, many: int | None = None, idle: int = 0) -> dict[str, Any]:
    """`many`: simulated clients for the failover of many (None: none in quick, MANY in full);
    `idle`: simulated idle clients whose Redis and CPU cost is measured (0: none; alone, without the rest)."""
    if idle:
        with tempfile.TemporaryDirectory(prefix="redirgate-bench-cluster-") as tmp:
            result = _idle(Path(tmp) / "idle", idle)
        result.update(machine=machine(), quick=quick)
        return result
    rounds = runs or (10 if quick else 40)
    many = (0 if quick else MANY) if many is None else many
    failovers = 3 if quick else 10
    kills = 2 if quick else 5
    with tempfile.TemporaryDirectory(prefix="redirgate-bench-cluster-") as tmp:
        result = trio.run(_measure, Path(tmp), rounds, failovers)
        if many:
            try:
                result.update(_failover_many(Path(tmp) / "many", many, kills))
            except (RuntimeError, OSError) as exc:
                result["many_error"] = f"{type(exc).__name__}: {exc}"
    result.update(machine=machine(), quick=quick, rounds=rounds, failovers=failovers, kills=kills)
    return result


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def table(result: dict[str, Any]) -> str:
    if "idle_n" in result:
        return "\n".join(
            [
                f"{result['idle_n']} simulated idle clients ({result['idle_online']} online) on node c of three, "
                f"heartbeat_s = 2; {IDLE_WINDOWS} windows of {IDLE_WINDOW_S:g} s:",
                "  Redis commands/s (all nodes)     " + "  ".join(f"{v:8.1f}" for v in result["idle_cmds_per_s"]),
                "  node c CPU, % of a core          " + "  ".join(f"{v:8.2f}" for v in result["idle_node_cpu_pct"]),
                "  redis-server CPU, % of a core    " + "  ".join(f"{v:8.2f}" for v in result["idle_redis_cpu_pct"]),
            ]
        )
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
    if "many_n" in result:
        lines.append(
            f"failover of {result['many_n']} simulated clients, {result.get('many_marked')} on the killed node, "
            f"{len(result['many_p99_s'])} kill(s); time from the kill to each client's hello answered elsewhere:"
        )
        for key, label in (
            ("many_p50_s", "p50"),
            ("many_p99_s", "p99"),
            ("many_max_s", "all back (max)"),
            ("many_tls_p50_s", "their TLS handshakes done, p50"),
            ("many_tls_p99_s", "their TLS handshakes done, p99"),
        ):
            values = result[key]
            lines.append(f"  {label:42}" + ("  ".join(f"{v:.2f} s" for v in values) or "missing"))
        for key, label in (
            ("many_attempts", "dials (TCP+TLS) until back"),
            ("many_hints", "busy lines (retry hints) received"),
            ("many_abandoned", "dials given up mid-handshake"),
        ):
            if result.get(key):
                lines.append(f"  {label:42}" + "  ".join(str(v) for v in result[key]))
        for cpu in result.get("many_cpu", []):
            lines.append(
                f"  {'CPU until all back (2 survivors; loadgens)':42}{cpu['survivors_s']:.2f} s; "
                f"{cpu['loadgens_s']:.2f} s in {cpu['wall_s']:.1f} s"
            )
        for landed in result.get("many_landed", []):
            lines.append(f"  {'landed on':42}" + ", ".join(f"{name}: {k}" for name, k in landed.items()))
        worst = max(result["many_p99_s"], default=None)
        if worst is not None:
            verdict = "meets" if worst <= FAILOVER_FLOOR_S else "MISSES"
            lines.append(
                f"floor: back on another node within {FAILOVER_FLOOR_S:g} s, p99, {result['many_n']} clients: "
                f"worst p99 {worst:.2f} s, {verdict}"
            )
        for note in result["many_notes"]:
            lines.append(f"  note: {note}")
    if "many_error" in result:
        lines.append(f"failover of many: {result['many_error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = script_arguments(__doc__, "10 attach rounds and 3 failovers instead of 40 and 10; 2 kills of many")
    parser.add_argument(
        "--many", type=int, help=f"simulated clients for the failover of many (0: none; default: {MANY}, none in quick)"
    )
    parser.add_argument(
        "--idle", type=int, default=0, help="only this: N idle simulated clients, Redis commands/s and CPU"
    )
    args = parser.parse_args(argv)
    emit(run(args.quick, runs=args.runs, many=args.many, idle=args.idle), table, args.json)


if __name__ == "__main__":
    main()
