"""Prometheus metrics and the audit log of a real `gateway run`, checked after probes through its routes."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from tests.support.gateway_procs import running_client, running_gateway
from tests.support.waiting import wait_until


def redirgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "redirgate.cli", *args], capture_output=True, text=True, timeout=300)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metrics_port_of(client: subprocess.Popen[str]) -> int:
    """The port `client run` says it serves metrics on (its stdout: `metrics HOST:PORT`)."""
    assert client.stdout is not None
    for _ in range(5):
        words = client.stdout.readline().split()
        if words and words[0] == "metrics":
            return int(words[1].rsplit(":", 1)[1])
    raise AssertionError("client run did not say where its metrics are")


def audit_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_metrics_and_audit_after_a_probe_through_a_route(tmp_path: Path) -> None:
    make_pki(tmp_path)
    image = tmp_path / "stick.img"
    image.write_bytes(bytes(1024 * 1024))
    audit = tmp_path / "audit.jsonl"
    config = write_gateway_config(
        tmp_path, [LabRoute("stick", "usb:1209:0001"), LabRoute("far", "usb:1209:0001", allow=["10.0.0.0/8"])]
    )
    config.write_text(
        config.read_text().replace(
            "[gateway]\n", f'[gateway]\nmetrics_listen = "127.0.0.1:0"\naudit_log = "{audit}"\n', 1
        )
    )
    with running_gateway(config, tmp_path / "gateway.log") as gw:
        assert gw.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/healthz", timeout=30) as response:
            assert response.status == 200 and response.read().startswith(b"ok")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/nothing", timeout=30)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
        client_config = write_client_config(tmp_path, gw.tunnel_port, virtual=[f"virtual:storage:{image}"])
        client_config.write_text(
            client_config.read_text().replace("[client]\n", '[client]\nmetrics_listen = "127.0.0.1:0"\n', 1)
        )
        with running_client(client_config, tmp_path / "client.log") as client:
            client_metrics_port = metrics_port_of(client)
            wait_until(lambda: scrape(gw.metrics_port)[("redirgate_clients_online", ())] == 1, "client online")
            probed = redirgate("probe", f"127.0.0.1:{gw.routes['stick']}", "--timeout", "120")
            assert probed.returncode == 0, probed.stderr + gw.log()
            assert redirgate("probe", f"127.0.0.1:{gw.routes['far']}", "--timeout", "60").returncode == 1
            with socket.create_connection(("127.0.0.1", gw.tunnel_port), timeout=30) as garbage:
                garbage.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(600))
                try:
                    garbage.recv(100)  # the gateway closes it (a reset or an alert)
                except ConnectionResetError:
                    pass
            wait_until(lambda: {"attach", "detach", "refusal"} <= {e["event"] for e in audit_lines(audit)}, "audit")
            wait_until(
                lambda: (
                    scrape(gw.metrics_port).get(("redirgate_tls_handshake_failures_total", (("reason", "not_tls"),)))
                    == 1
                ),
                "the garbage counted",
            )
            metrics = scrape(gw.metrics_port)
            on_client = scrape(client_metrics_port)
    # the client's own: its tunnel, and every USB transfer the probe made, timed
    assert on_client[("redirgate_tunnel_up", ())] == 1 and on_client[("redirgate_tunnel_sessions_total", ())] == 1
    assert on_client[("redirgate_usb_transfer_seconds_count", ())] >= 5  # descriptors and strings
    assert on_client[("redirgate_iso_packets_dropped_total", ())] == 0
    assert on_client[("redirgate_iso_out_packets_dropped_total", ())] == 0
    to_device = metrics[("redirgate_channel_bytes_total", (("direction", "to_device"), ("route", "stick")))]
    to_hypervisor = metrics[("redirgate_channel_bytes_total", (("direction", "to_hypervisor"), ("route", "stick")))]
    assert to_device > 0 and to_hypervisor > to_device  # descriptors flow to the VM
    assert metrics[("redirgate_refusals_total", (("reason", "source_not_allowed"),))] == 1
    assert metrics[("redirgate_channel_attaches_total", (("route", "stick"),))] == 1
    assert metrics[("redirgate_channels_open", ())] == 0
    assert metrics[("redirgate_route_up", (("route", "far"),))] == 1
    expiry = [v for (name, _labels), v in metrics.items() if name == "redirgate_certificate_expiry_seconds"]
    assert len(expiry) == 2 and all(v > 300 * 86400 for v in expiry)  # gateway cert and CA

    events = {e["event"]: e for e in audit_lines(audit)}
    attach, detach = events["attach"], events["detach"]
    assert attach["route"] == "stick" and attach["client"] == "thin-01"
    assert isinstance(attach["device"], dict) and attach["device"]["vid_pid"] == "1209:0001"
    assert str(attach["hypervisor"]).startswith("127.0.0.1:")
    assert detach["bytes_to_device"] == to_device and detach["bytes_to_hypervisor"] == to_hypervisor
    assert isinstance(detach["duration_s"], float) and detach["reason"]
    refusals = [(e.get("route"), e["reason"]) for e in audit_lines(audit) if e["event"] == "refusal"]
    assert sorted(refusals, key=str) == [("far", "source_not_allowed"), (None, "tls_not_tls")]
    assert all(re.match(r"\d{4}-\d\d-\d\dT", str(e["time"])) for e in events.values())
