"""The thin client's Prometheus metrics, read from the live service at scrape time.

`client_registry(service)` is a `CollectorRegistry` whose collector reads
the `ClientService` when scraped (the endpoint runs on the client's trio
loop, so no locks): whether the tunnel is up, how many control sessions it
has had, the channels open now, the ports exported, stream packets dropped
(client/usb/outbox.py counts them), and a histogram of USB transfer times
that client/usb/transfers.py feeds only while metrics are on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
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
        from redirgate.client.usb import outbox

        yield CounterMetricFamily(
            "redirgate_iso_packets_dropped",
            "Isochronous packets dropped because the VM side read too slowly (as usbredirhost drops them)",
            outbox.dropped_totals["iso"],
        )
        from redirgate.client.usb import streams

        yield CounterMetricFamily(
            "redirgate_iso_out_packets_dropped",
            "Isochronous OUT packets from the VM side dropped because the device fell behind (as usbredirhost drops them)",
            streams.dropped_totals["iso_out"],
        )
        yield CounterMetricFamily(
            "redirgate_stream_packets_dropped",
            "Interrupt and bulk-receiving stream packets dropped because the VM side read too slowly",
            outbox.dropped_totals["other"],
        )


#: seconds, from a fast control transfer to a slow bulk read
_TRANSFER_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def client_registry(service: Any) -> CollectorRegistry:
    """The registry `/metrics` serves; creating it turns the per-transfer timing on (process-wide)."""
    from redirgate.client.usb import transfers

    registry = CollectorRegistry(auto_describe=True)
    registry.register(_ClientCollector(service))
    seconds = Histogram(
        "redirgate_usb_transfer_seconds",
        "USB data requests (control, bulk, interrupt) from the VM's request to the device's reply",
        buckets=_TRANSFER_BUCKETS,
        registry=registry,
    )
    transfers.transfer_observer = seconds.observe
    return registry
