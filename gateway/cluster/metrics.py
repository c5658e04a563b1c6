"""A cluster node's metrics: every sample carries the node's name; Redis's state and the cross-node attaches.

`NodeRegistry` is the gateway's `CollectorRegistry` with a `node="NAME"`
label added to every sample at scrape time, so the metrics of several
gateways scraped into one Prometheus stay apart without a relabelling rule.
`ClusterCollector` reads the node at scrape time (on the trio loop, like
the rest of the metrics endpoint).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from redirgate.gateway.cluster.node import ClusterNode

__all__ = ["ClusterCollector", "NodeRegistry"]


class NodeRegistry(CollectorRegistry):
    """A registry whose every sample is labelled `node="NAME"`."""

    def __init__(self, node: str) -> None:
        super().__init__(auto_describe=True)
        self.node = node

    def collect(self) -> Iterable[Metric]:
        for metric in super().collect():
            metric.samples = [s._replace(labels={**s.labels, "node": self.node}) for s in metric.samples]
            yield metric


class ClusterCollector(Collector):
    """Redis reachable or not, live nodes, attaches across nodes and those refused while Redis was away."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        node = self.node
        yield GaugeMetricFamily("redirgate_cluster_redis_up", "1 while this node reaches Redis", int(node.up))
        yield GaugeMetricFamily(
            "redirgate_cluster_nodes", "Live nodes of the cluster, this one included", len(node.peers) + 1
        )
        counters = node.counters
        yield CounterMetricFamily(
            "redirgate_cluster_redis_outages", "Times this node lost Redis", counters["redis_outages"]
        )
        yield CounterMetricFamily(
            "redirgate_cluster_remote_attaches",
            "Channels attached here whose client's control connection is on another node",
            counters["remote_attaches"],
        )
        refused = CounterMetricFamily(
            "redirgate_cluster_attaches_refused",
            "Attaches through another node this node could not make, by reason",
            labels=["reason"],
        )
        refused.add_metric(["redis_down"], counters["attaches_refused_redis_down"])
        refused.add_metric(["node_failed"], counters["attaches_failed_remote"])
        yield refused
