"""The client's TOML configuration: where the gateway is, who we are, what we export.

    [client]
    gateway = "gw.example.net:7443"    # the gateway's tunnel port; several gateways of a cluster:
                                       # ["gw-a:7443", "gw-b:7443"] (the first first; client/redial.py)
    server_name = "gw.example.net"     # name in its certificate (default: the host part)
    reconnect_max_s = 30               # longest wait between reconnect attempts (jittered backoff)
    metrics_listen = "127.0.0.1:9471"  # optional: Prometheus /metrics and /healthz
    cert = "client-cert.pem"           # our identity is in this certificate
    key = "client-key.pem"
    ca = "ca-cert.pem"
    crl = "crl.pem"                    # optional: the CA's CRL; a gateway it revokes is refused

    [export]                           # nothing is exported unless listed here
    usb_ids = ["0781:5567", "046d:c31c:SERIAL"]
    usb_ports = ["1-2.3"]
    usb_rules = "0x08,-1,-1,-1,1|-1,-1,-1,-1,0"   # usbredir filter rules
    virtual = ["virtual:storage:demo.img", "virtual:keyboard"]   # emulated, for demos

    [[serial]]                         # a serial port, exported as serial:NAME
    name = "console"
    port = "/dev/ttyUSB0"              # a path, by-id:NAME or VID:PID[:SERIAL]
    settings = "115200,8N1"            # baud,bits parity stop [rtscts] [xonxoff]
    ring_bytes = 65536                 # kept while no consumer is connected
    takeover = false                   # a new consumer replaces the old one

    [[parallel]]                       # a printer port, exported as parallel:NAME
    name = "printer"
    port = "/dev/lp0"                  # /dev/lpN, /dev/usb/lpN or /dev/parportN
    ring_bytes = 4194304               # queued for the printer while it is away

A device is exported when it matches one of `usb_ids` or `usb_ports`, or when
`usb_rules` allow it.  Mistakes are reported like the gateway's: file, line,
key and reason, all at once (`ConfigErrors`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redirgate.client.parallel.exports import parse_parallel_tables
from redirgate.client.usb.descriptors import DeviceSnapshot
from redirgate.client.usb.errors import SelectorError
from redirgate.client.usb.selector import DeviceSelector, parse_selector
from redirgate.proto.usbredir import filter as usbfilter

__all__ = ["ClientConfig", "ConfigError", "ExportPolicy", "load_client_config"]


class ConfigError(Exception):
    """Every mistake found in a client configuration file."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class ExportPolicy:
    usb_ids: tuple[DeviceSelector, ...] = ()
    usb_ports: tuple[DeviceSelector, ...] = ()
    usb_rules: tuple[usbfilter.FilterRule, ...] | None = None
    virtual: tuple[str, ...] = ()

    def allows(self, snap: DeviceSnapshot, *, virtual: bool = False) -> bool:
        """Whether a device may be exported (emulated ones are, when listed)."""
        if virtual:
            return True
        for selector in self.usb_ids:
            if selector.vendor_id == snap.vendor_id and selector.product_id == snap.product_id:
                if selector.serial is None or selector.serial == snap.serial:
                    return True
        if any(selector.port == snap.port_path for selector in self.usb_ports):
            return True
        if self.usb_rules is not None:
            classes = snap.interface_classes({})
            if not classes:
                # unconfigured: judge by the first configuration's interfaces
                for config in snap.configs.values():
                    classes = tuple(
                        (a[0].interface_class, a[0].interface_subclass, a[0].interface_protocol)
                        for a in config.interfaces.values()
                    )
                    break
            verdict = usbfilter.check(
                self.usb_rules,
                snap.device_class,
                snap.device_subclass,
                snap.device_protocol,
                classes,
                snap.vendor_id,
                snap.product_id,
                snap.bcd_device,
            )
            return verdict.allowed
        return False


@dataclass(frozen=True)
class ClientConfig:
    path: Path
    gateway_host: str
    gateway_port: int
    server_name: str
    cert: Path
    key: Path
    ca: Path
    export: ExportPolicy
    serial: tuple[Any, ...] = ()
    parallel: tuple[Any, ...] = ()
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    inventory_interval_s: float = 1.0
    #: Prometheus /metrics and /healthz as (host, port); None: off
    metrics_listen: tuple[str, int] | None = None
    #: the other gateways of a cluster listed in `gateway` (after losing one: `client/redial.py`)
    more_gateways: tuple[tuple[str, int], ...] = ()
    #: the CA's CRL on this machine (optional); the gateway also hands its own
    crl: Path | None = None


def _locate(text: str, key: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith(f"{key} ") or line.strip().startswith(f"{key}="):
            return number
    return None


def load_client_config(path: str | Path) -> ClientConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    problems: list[str] = []

    def problem(key: str, reason: str) -> None:
        line = _locate(text, key.rsplit(".", 1)[-1])
        problems.append(f"{path}:{line}: {key}: {reason}" if line else f"{path}: {key}: {reason}")

    client: dict[str, Any] = data.get("client", {})
    export: dict[str, Any] = data.get("export", {})
    for key in data:
        if key not in ("client", "export", "serial", "parallel"):
            problem(key, "unknown table (expected [client], [export], [[serial]] and [[parallel]])")
    for key in client:
        if key not in {"gateway", "server_name", "cert", "key", "ca", "crl", "reconnect_max_s", "metrics_listen"}:
            problem(f"client.{key}", "unknown key")
    for key in export:
        if key not in {"usb_ids", "usb_ports", "usb_rules", "virtual"}:
            problem(f"export.{key}", "unknown key")

    gateway = client.get("gateway")
    listed = gateway if isinstance(gateway, list) and gateway else [gateway]
    addresses: list[tuple[str, int]] = []
    for item in listed:
        if not isinstance(item, str) or ":" not in item:
            problem("client.gateway", 'missing or not HOST:PORT (or a list of them: ["gw-a:7443", "gw-b:7443"])')
            continue
        a_host, _, port_text = item.rpartition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            problem("client.gateway", f"{item!r} has no valid port")
        else:
            addresses.append((a_host.strip("[]"), int(port_text)))
    host, port = addresses[0] if addresses else ("", 0)

    def file(key: str) -> Path:
        value = client.get(key)
        if not isinstance(value, str) or not value:
            problem(f"client.{key}", "missing (a file path)")
            return Path()
        result = Path(value) if Path(value).is_absolute() else path.parent / value
        if not result.exists():
            problem(f"client.{key}", f"file {result} does not exist")
        return result

    cert, key_path, ca = file("cert"), file("key"), file("ca")
    crl = file("crl") if "crl" in client else None

    metrics: tuple[str, int] | None = None
    if "metrics_listen" in client:
        text = client["metrics_listen"]
        m_host, sep, m_port = str(text).rpartition(":")
        if not isinstance(text, str) or not sep or not m_port.isdigit() or not 0 <= int(m_port) < 65536:
            problem("client.metrics_listen", f"{text!r} is not HOST:PORT")
        else:
            metrics = (m_host.strip("[]") or "127.0.0.1", int(m_port))

    def selectors(key: str, want_port: bool) -> tuple[DeviceSelector, ...]:
        values = export.get(key, [])
        if not isinstance(values, list):
            problem(f"export.{key}", "must be a list of strings")
            return ()
        out = []
        for value in values:
            try:
                selector = parse_selector(str(value) if want_port else f"usb:{value}")
            except SelectorError as exc:
                problem(f"export.{key}", str(exc))
                continue
            if want_port and selector.port is None:
                problem(f"export.{key}", f"{value!r} is not a port path like 1-2.3")
                continue
            out.append(selector)
        return tuple(out)

    rules = None
    if "usb_rules" in export:
        try:
            rules = usbfilter.parse_rules(str(export["usb_rules"]))
        except usbfilter.FilterError as exc:
            problem("export.usb_rules", str(exc))
    virtual = export.get("virtual", [])
    if not isinstance(virtual, list) or not all(isinstance(v, str) and v.startswith("virtual:") for v in virtual):
        problem("export.virtual", "must be a list of virtual:... specs")
        virtual = []
    else:
        virtual = [_resolve_virtual(v, path.parent) for v in virtual]
    policy = ExportPolicy(selectors("usb_ids", False), selectors("usb_ports", True), rules, tuple(virtual))
    serial = _serial_exports(data.get("serial", []), problem)
    parallel = parse_parallel_tables(data.get("parallel", []), problem)
    if problems:
        raise ConfigError(problems)
    return ClientConfig(
        path=path,
        gateway_host=host,
        gateway_port=port,
        more_gateways=tuple(addresses[1:]),
        server_name=str(client.get("server_name") or host),
        cert=cert,
        key=key_path,
        ca=ca,
        export=policy,
        serial=serial,
        parallel=parallel,
        reconnect_max_s=float(client.get("reconnect_max_s", 30.0)),
        metrics_listen=metrics,
        crl=crl,
    )


def _resolve_virtual(spec: str, base: Path) -> str:
    """Make a storage image path relative to the config file absolute."""
    kind, _, rest = spec.partition(":")[2].partition(":")
    if kind.split("@", 1)[0] == "storage" and rest and not Path(rest).is_absolute():
        return f"virtual:{kind}:{base / rest}"
    return spec


_SERIAL_KEYS = {"name", "port", "settings", "ring_bytes", "takeover"}


def _serial_exports(tables: Any, problem: Any) -> tuple[Any, ...]:
    """The [[serial]] tables as SerialExports (imported here: only when used)."""
    from redirgate.client.export_tables import export_tables, ring_bytes
    from redirgate.client.serial.errors import SerialError
    from redirgate.client.serial.exports import SerialExport
    from redirgate.client.serial.selector import parse_port_selector
    from redirgate.client.serial.settings import LineSettings

    out = []
    for where, table, name in export_tables("serial", tables, _SERIAL_KEYS, problem):
        port = table.get("port")
        if not isinstance(port, str):
            problem(f"{where}.port", "missing (a path, by-id:NAME or VID:PID[:SERIAL])")
            continue
        try:
            selector = parse_port_selector(port)
            settings = LineSettings.parse(str(table.get("settings", "9600,8N1")))
        except (SerialError, ValueError) as exc:
            problem(f"{where}.settings", str(exc))
            continue
        ring = ring_bytes(where, table, 64 * 1024, 64 * 1024 * 1024, problem)
        if ring is not None:
            out.append(SerialExport(name, selector, settings, ring, bool(table.get("takeover", False))))
    return tuple(out)
