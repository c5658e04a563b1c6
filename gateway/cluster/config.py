"""The `[cluster]` table of gateway.toml: which Redis, which node we are, where clients reach us.

    [cluster]
    redis = "redis://:PASSWORD@10.0.0.5:6379/0"   # rediss:// for TLS
    node = "gw-a"                                 # unique per gateway process
    advertise = "gw-a.example.net:7443"           # this node's tunnel port as clients dial it (port 0: the one
                                                  # tunnel_listen got, for tests)
    redis_ca = "pki/redis-ca.pem"                 # optional, rediss://: the CA of Redis's certificate
    heartbeat_s = 2                               # optional: how often this node refreshes its keys
    node_timeout_s = 6                            # optional: a node silent this long is dead

Without the table the gateway runs alone, exactly as before.  Each mistake is
one line naming the key and what to write instead (`gateway check`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redirgate.gateway.cluster.redis import RedisUrl

__all__ = ["CLUSTER_KEYS", "ClusterConfig", "parse_cluster"]

CLUSTER_KEYS = {"redis", "node", "advertise", "redis_ca", "heartbeat_s", "node_timeout_s"}
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_WILDCARDS = {"0.0.0.0", "::", ""}


@dataclass(frozen=True)
class ClusterConfig:
    redis: RedisUrl
    node: str
    #: this node's tunnel address as clients dial it ("HOST:PORT")
    advertise: str
    redis_ca: Path | None = None
    heartbeat_s: float = 2.0
    node_timeout_s: float = 6.0

    @property
    def advertise_host(self) -> str:
        return self.advertise.rpartition(":")[0].strip("[]")

    @property
    def advertise_port(self) -> int:
        return int(self.advertise.rpartition(":")[2])


def parse_cluster(
    data: Any, problem: Callable[[str, str], None], base: Path, *, check_files: bool = True
) -> ClusterConfig | None:
    """The `[cluster]` table, or None after `problem(key, reason)` for each mistake."""
    if not isinstance(data, dict):
        problem("", 'must be a table: [cluster] with redis = "redis://HOST:PORT/DB", node and advertise')
        return None
    count = 0

    def bad(key: str, reason: str) -> None:
        nonlocal count
        count += 1
        problem(key, reason)

    for key in data:
        if key not in CLUSTER_KEYS:
            bad(key, f"unknown key (expected one of: {', '.join(sorted(CLUSTER_KEYS))})")
    url = None
    text = data.get("redis")
    if text is None:
        bad("redis", 'missing: write redis = "redis://HOST:PORT/DB" (rediss:// for TLS)')
    else:
        try:
            url = RedisUrl.parse(text)
        except ValueError as exc:
            bad("redis", f'{exc}; write redis = "redis://[:PASSWORD@]HOST:PORT/DB"')
    node = data.get("node")
    if node is None:
        bad("node", 'missing: name this gateway, unique in the cluster, e.g. node = "gw-a"')
    elif not isinstance(node, str) or not _NODE.match(node):
        bad("node", f"{node!r}: use letters, digits, '_', '.', '-' (at most 64), e.g. node = \"gw-a\"")
    advertise = data.get("advertise")
    if advertise is None:
        bad("advertise", 'missing: the tunnel address clients dial for this node, e.g. advertise = "gw-a.example:7443"')
    else:
        why = _advertise_problem(advertise)
        if why:
            bad("advertise", why)
    ca = None
    if "redis_ca" in data:
        value = data["redis_ca"]
        if not isinstance(value, str) or not value:
            bad("redis_ca", "must be the path of the CA file that signed Redis's certificate")
        else:
            ca = Path(value) if Path(value).is_absolute() else base / value
            if check_files and not ca.exists():
                bad("redis_ca", f"file {ca} does not exist")
            elif url is not None and not url.tls:
                bad("redis_ca", 'applies to rediss:// only; write redis = "rediss://..." or remove redis_ca')
    timing = {}
    for key, default, minimum in (("heartbeat_s", 2.0, 0.1), ("node_timeout_s", 6.0, 0.3)):
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            bad(key, f"must be a number of seconds >= {minimum:g}, not {value!r}")
            value = default
        timing[key] = float(value)
    if timing["node_timeout_s"] < 2 * timing["heartbeat_s"]:
        bad("node_timeout_s", f"must be at least twice heartbeat_s ({2 * timing['heartbeat_s']:g} s or more)")
    if count or url is None:
        return None
    assert isinstance(node, str) and isinstance(advertise, str)
    return ClusterConfig(url, node, advertise, ca, timing["heartbeat_s"], timing["node_timeout_s"])


def _advertise_problem(value: Any) -> str:
    if not isinstance(value, str):
        return f'{value!r}: must be a string "HOST:PORT", the tunnel address clients dial for this node'
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        return (
            f'{value!r} has no valid port: write advertise = "HOST:PORT" (port 1-65535; 0: the port tunnel_listen got)'
        )
    if host in _WILDCARDS:
        return f"{value!r}: clients cannot dial a wildcard; name this node's address as clients reach it"
    return ""
