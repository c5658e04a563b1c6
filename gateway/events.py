"""What happened on the gateway, said once: Prometheus metrics and the audit log.

The tunnel and route servers call `GatewayEvents` at each attach, detach,
refusal, TLS failure, guard violation and revocation; it counts them in
the gateway's own `CollectorRegistry` (`redirgate_*`, labelled by route or
reason, never by address) and, with `audit_log = PATH`, appends one JSON
line per attach, detach, refusal and revocation: time, event, client
identity, device (id, VID:PID, serial), route, hypervisor address, bytes
each way, duration and reason.  Gauges (clients online, channels open,
bytes per route, days until a certificate expires) are read from the live
gateway at scrape time by `GatewayCollector`.

Everything runs on the gateway's trio loop (the metrics endpoint too), so
no locks.  The audit file is opened once, line-buffered, and written with
one `write` per event: a local append of a few hundred bytes, which does
not stall the loop in practice; an error writing it is logged once and the
gateway goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from redirgate.gateway.cluster.metrics import NodeRegistry

__all__ = ["AuditLog", "GatewayEvents"]

log = logging.getLogger(__name__)


class AuditLog:
    """One JSON object per line, appended to `path` (created mode 0640)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._failed = False

    def write(self, event: str, **fields: Any) -> None:
        entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), "event": event}
        entry.update({k: v for k, v in fields.items() if v is not None})
        try:
            if self._file is None:
                self._file = _open_append(self.path)
            self._file.write(json.dumps(entry, default=str) + "\n")
        except OSError as exc:
            if not self._failed:
                log.error("audit log %s: cannot write: %s; audit lines are lost until it works", self.path, exc)
            self._failed = True
            self.close()
            return
        self._failed = False

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


def _open_append(path: Path) -> IO[str]:
    import os

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    return open(fd, "a", buffering=1, encoding="utf-8")


class GatewayEvents:
    """Counters and audit lines for one gateway (see the module docstring)."""

    def __init__(self, audit: AuditLog | None = None, *, node: str | None = None) -> None:
        """`node`: a cluster node's name, added as a label to every metric."""
        self.registry = CollectorRegistry(auto_describe=True) if node is None else NodeRegistry(node)
        self.audit = audit
        self.refusals = Counter(
            "redirgate_refusals_total", "Connections refused, by reason", ["reason"], registry=self.registry
        )
        self.tls_failures = Counter(
            "redirgate_tls_handshake_failures_total",
            "TLS handshakes that failed or were refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.guard_violations = Counter(
            "redirgate_guard_violations_total",
            "usbredir messages from a client the guard stopped before QEMU",
            ["route"],
            registry=self.registry,
        )
        self.attaches = Counter(
            "redirgate_channel_attaches_total",
            "Channels opened between a VM and a device",
            ["route"],
            registry=self.registry,
        )
        self.revocations = Counter(
            "redirgate_revocations_total",
            "Live client sessions ended because their certificate was revoked",
            registry=self.registry,
        )

    def watch(self, collector: Collector) -> None:
        self.registry.register(collector)

    # -- events ------------------------------------------------------------
    def refused(
        self, reason: str, *, peer: str, detail: str = "", route: str | None = None, client: str | None = None
    ) -> None:
        self.refusals.labels(reason).inc()
        if self.audit is not None:
            self.audit.write("refusal", reason=reason, detail=detail or None, route=route, client=client, peer=peer)

    def tls_failed(self, reason: str, *, peer: str, detail: str = "", route: str | None = None) -> None:
        """A handshake that failed is a refusal too (counted in both)."""
        self.tls_failures.labels(reason).inc()
        self.refused(f"tls_{reason}", peer=peer, detail=detail, route=route)

    def guard_violation(self, route: str) -> None:
        self.guard_violations.labels(route).inc()

    def attached(self, *, route: str, client: str, device: dict[str, Any], hypervisor: str, channel: int) -> None:
        self.attaches.labels(route).inc()
        if self.audit is not None:
            self.audit.write(
                "attach", route=route, client=client, device=device, hypervisor=hypervisor, channel=channel
            )

    def detached(
        self,
        *,
        route: str,
        client: str,
        device: dict[str, Any],
        hypervisor: str,
        channel: int,
        bytes_to_device: int,
        bytes_to_hypervisor: int,
        duration_s: float,
        reason: str,
    ) -> None:
        if self.audit is not None:
            self.audit.write(
                "detach",
                route=route,
                client=client,
                device=device,
                hypervisor=hypervisor,
                channel=channel,
                bytes_to_device=bytes_to_device,
                bytes_to_hypervisor=bytes_to_hypervisor,
                duration_s=round(duration_s, 3),
                reason=reason,
            )

    def revoked(self, *, client: str, peer: str) -> None:
        self.revocations.inc()
        if self.audit is not None:
            self.audit.write("revocation", client=client, peer=peer, reason="certificate revoked")

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()


class GatewayCollector(Collector):
    """Gauges and byte counters read from the live gateway at scrape time."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def describe(self) -> list[Any]:
        return []  # read at scrape time only (registering must not read a gateway still being built)

    def collect(self) -> Iterator[Any]:
        state = self.read()
        yield GaugeMetricFamily("redirgate_clients_online", "Thin clients with a control connection", state["clients"])
        yield GaugeMetricFamily(
            "redirgate_channels_open", "Channels relaying between a VM and a device", state["channels"]
        )
        routes = GaugeMetricFamily("redirgate_route_up", "1 while the route's listener is open", labels=["route"])
        moved = CounterMetricFamily(
            "redirgate_channel_bytes", "Bytes relayed per route and direction", labels=["route", "direction"]
        )
        for name, to_device, to_hypervisor in state["bytes"]:
            routes.add_metric([name], 1)
            moved.add_metric([name, "to_device"], to_device)
            moved.add_metric([name, "to_hypervisor"], to_hypervisor)
        yield routes
        yield moved
        dropped = CounterMetricFamily(
            "redirgate_channel_packets_dropped",
            "Stream packets the route's client dropped (as usbredirhost drops them; its StreamDrops reports): "
            "iso_out = the VM's iso OUT packets the device could not take in time, to_guest = packets from the "
            "device the VM read too slowly for",
            labels=["route", "client", "kind"],
        )
        for name, client, iso_out, to_guest in state.get("dropped", []):
            dropped.add_metric([name, client, "iso_out"], iso_out)
            dropped.add_metric([name, client, "to_guest"], to_guest)
        yield dropped
        expiry = GaugeMetricFamily(
            "redirgate_certificate_expiry_seconds",
            "Seconds until a certificate the gateway uses expires",
            labels=["file"],
        )
        for path, seconds in state["expiry"]:
            expiry.add_metric([path], seconds)
        yield expiry
        bounded = CounterMetricFamily(
            "redirgate_bounded",
            "What the gateway's bounds refused or held back, by counter (as in `gateway status`)",
            labels=["counter"],
        )
        for name, count in sorted(state.get("counters", {}).items()):
            bounded.add_metric([name], count)
        yield bounded
        crl = state.get("crl")
        if crl is not None:
            yield GaugeMetricFamily(
                "redirgate_crl_next_update_seconds",
                "Seconds until the CRL in force passes its nextUpdate",
                crl["next_update_s"],
            )
            yield GaugeMetricFamily(
                "redirgate_crl_stale", "1 while the CRL in force is past its nextUpdate", crl["stale"]
            )
            yield CounterMetricFamily(
                "redirgate_crl_stale_accepted",
                'Handshakes accepted against a stale CRL (stale_crl = "warn")',
                crl["stale_accepted"],
            )
