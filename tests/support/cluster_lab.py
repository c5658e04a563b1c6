"""Several gateways as one on a real redis-server, for the cluster tests.

`cluster_config(directory, routes, node, redis_url)` writes a gateway.toml
for one node beside the others: the same PKI (`cli.lab.make_pki` in
`directory`), its own admin socket, every route on port 0 (each node binds
its own ports), `[cluster]` with a short heartbeat so a dead node is seen in
about a second, and `advertise` on 127.0.0.1 with the port its tunnel
listener gets (port 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from redirgate.cli.lab import LabRoute, write_gateway_config

__all__ = ["cluster_config"]


def cluster_config(
    directory: Path,
    routes: Sequence[LabRoute],
    node: str,
    redis_url: str,
    *,
    heartbeat_s: float = 0.5,
    node_timeout_s: float = 1.5,
    advertise: str = "127.0.0.1:0",
    metrics: bool = False,
    **options: float,
) -> Path:
    """`metrics`: /metrics on a port of its own (127.0.0.1:0)."""
    written = write_gateway_config(directory, routes, **options)
    text = written.read_text().replace(str(directory / "gateway.sock"), str(directory / f"{node}.sock"))
    if metrics:
        text = text.replace("[gateway]\n", '[gateway]\nmetrics_listen = "127.0.0.1:0"\n', 1)
    text += (
        f'\n[cluster]\nredis = "{redis_url}"\nnode = "{node}"\nadvertise = "{advertise}"\n'
        f"heartbeat_s = {heartbeat_s}\nnode_timeout_s = {node_timeout_s}\n"
    )
    path = directory / f"{node}.toml"
    path.write_text(text)
    return path
