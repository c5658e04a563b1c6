"""Logs an admin can run with: INFO by default for services, options anywhere, plain/journal/JSON."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from redirgate.cli.lab import LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.cli.logs import hoist_log_options, setup_logging
from tests.support.gateway_procs import running_client, running_gateway
from tests.support.waiting import wait_until


def redirgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "redirgate.cli", *args], capture_output=True, text=True, timeout=300)


def test_log_options_are_accepted_after_the_subcommand() -> None:
    assert hoist_log_options(["gateway", "run", "--config", "x", "-vv", "--log-format", "json"]) == [
        "-vv",
        "--log-format",
        "json",
        "gateway",
        "run",
        "--config",
        "x",
    ]
    assert hoist_log_options(["probe", "--log-level=debug", "h:1", "--", "-v"]) == [
        "--log-level=debug",
        "probe",
        "h:1",
        "--",
        "-v",
    ]
    # argparse really takes them there (a wrong value is refused by the main parser)
    out = redirgate("gateway", "check", "--config", "/nonexistent.toml", "--log-level", "loud")
    assert out.returncode == 2 and "--log-level" in out.stderr and "invalid choice" in out.stderr


def test_journal_lines_under_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With $JOURNAL_STREAM naming our stderr: `<N>logger: text`, no timestamp."""
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        try:
            setup_logging(logging.INFO, "auto", stream)
            logging.getLogger("redirgate.gateway.tunnel").info("client %s online", "thin-01")
            logging.getLogger("redirgate.gateway.route_server").warning("refused\nsecond line")
            logging.getLogger("redirgate.x").debug("not shown")
        finally:
            root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert path.read_text().splitlines() == [
        "<6>redirgate.gateway.tunnel: client thin-01 online",
        "<4>redirgate.gateway.route_server: refused",
        "<4>second line",
    ]


def _wait_for(log: Path, wanted: dict[str, str]) -> list[dict[str, object]]:
    """The gateway's JSON log entries once they hold every `wanted` text (another process writes them)."""

    def entries() -> list[dict[str, object]] | None:
        found = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        messages = [str(e["message"]) for e in found]
        return found if all(any(text in m for m in messages) for text in wanted.values()) else None

    return wait_until(entries, f"the log holding {sorted(wanted.values())}", detail=log.read_text)


def test_info_by_default_shows_connects_attaches_and_refusals_as_json(tmp_path: Path) -> None:
    make_pki(tmp_path)
    image = tmp_path / "stick.img"
    image.write_bytes(bytes(1024 * 1024))
    routes = [LabRoute("stick", "usb:1209:0001"), LabRoute("far", "usb:1209:0001", allow=["10.0.0.0/8"])]
    config = write_gateway_config(tmp_path, routes)
    log = tmp_path / "gateway.log"
    with running_gateway(config, log, options=("--log-format", "json")) as gw:
        client_config = write_client_config(tmp_path, gw.tunnel_port, virtual=[f"virtual:storage:{image}"])
        with running_client(client_config, tmp_path / "client.log"):
            wanted = {"connect": "client thin-01 online"}
            _wait_for(log, wanted)
            assert redirgate("probe", f"127.0.0.1:{gw.routes['stick']}", "--timeout", "120").returncode == 0
            assert redirgate("probe", f"127.0.0.1:{gw.routes['far']}", "--timeout", "60").returncode == 1
            wanted |= {
                "attach": "route stick: hypervisor 127.0.0.1:",
                "detach": "route stick: channel 1 ended",
                "refusal": "route far: refused hypervisor 127.0.0.1",
            }
            _wait_for(log, wanted)
        wanted["disconnect"] = "client thin-01 offline"
        entries = _wait_for(log, wanted)
    levels = {e["level"] for e in entries}
    assert "debug" not in levels and "info" in levels
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
