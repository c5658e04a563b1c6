"""The thin client's Prometheus metrics, read from the live service at scrape time.

`client_registry(service)` is a `CollectorRegistry` whose collector reads
the `ClientService` when scraped (the endpoint runs on the client's trio
loop, so no locks): whether the tunnel is up, how many control sessions it
has had, the channels open now, and the devices and ports exported.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["client_registry"]


class _ClientCollector(Collector):
    def __init__(self, service: Any) -> None:
        self.service = service

    def describe(self) -> list[Any]:
        return []  # read at scrape time only (registering must not read a gateway still being built)

    def collect(self) -> Iterator[Any]:
        client = self.service.client
        yield GaugeMetricFamily(
            "redirgate_tunnel_up", "1 while the control connection to the gateway is up", 1 if client.online else 0
        )
        yield CounterMetricFamily(
            "redirgate_tunnel_sessions", "Control sessions established since start", client.sessions
        )
        yield GaugeMetricFamily("redirgate_channels_open", "Channels this client serves now", len(client.channels))
        ports = self.service.ports.entries() if self.service.ports is not None else []
        yield GaugeMetricFamily("redirgate_ports_exported", "Serial and parallel ports exported", len(ports))


def client_registry(service: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_ClientCollector(service))
    return registry
