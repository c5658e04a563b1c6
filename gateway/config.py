"""The gateway's TOML configuration: load, validate, and name every mistake.

`load_config(path)` returns a frozen `GatewayConfig` or raises `ConfigErrors`
holding one `ConfigProblem` per mistake, each with the file, the line, the
key and the reason, so `redirgate gateway check` can print them all at once.
Relative paths are taken from the config file's folder.

    [gateway]
    tunnel_listen = "0.0.0.0:7443"     # where thin clients dial in (TLS 1.3, mutual)
    cert = "pki/gateway-cert.pem"
    key = "pki/gateway-key.pem"
    ca = "pki/ca-cert.pem"
    crl = "pki/crl.pem"                # required: the CA's CRL, re-read when it changes; "" = no revocation
    stale_crl = "refuse"               # past the CRL's nextUpdate: refuse new handshakes, or "warn"
    admin_socket = "gateway.sock"      # `redirgate gateway status` talks here
    public_host = "gw.example.net"     # what hypervisors dial (snippets)
    # bounds (README "Security model"): max_devices_per_client = 256, max_ports_per_client = 32,
    # inventory_updates_per_s = 5, inventory_update_burst = 20, usb_hello_timeout_s = 5,
    # max_handshakes = 256, max_handshakes_per_source = 16, limit_log_interval_s = 60,
    # handshake_pacing_s = 2.5 (0: no pacing, no retry hints)
    resume_grace_s = 60                # a channel whose client connection broke waits this long
                                       # for the client to resume it (0: unplug at once, as before)
    metrics_listen = "127.0.0.1:9470"  # optional: Prometheus /metrics and /healthz
    audit_log = "/var/log/redirgate/audit.jsonl"   # optional: one JSON line per attach/detach/refusal/revocation

    [cluster]                          # optional: several gateways as one (gateway/cluster/config.py)
    redis = "redis://:PASSWORD@10.0.0.5:6379/0"
    node = "gw-a"
    advertise = "gw-a.example.net:7443"

    [[route]]
    name = "stick"
    listen = "0.0.0.0:5001"            # the hypervisor-facing port selects the route
    client = "thin-01"                 # client identity (from its certificate)
    device = "usb:1209:0001"           # usb:VID:PID[:SERIAL] | usb-port:1-2.3
    allow = ["10.0.0.0/8"]             # hypervisor sources; default: loopback only
    settings = "115200,8N1"            # serial routes: line settings the client applies
    resume_grace_s = 300               # optional: this route's own grace period
    [route.tls]                        # optional: QEMU must speak TLS to this port
    cert = "..."; key = "..."; ca = "..."
    hypervisors = ["kvm-01"]           # optional: the hypervisor certificates allowed here
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redirgate.gateway.cluster.config import ClusterConfig, parse_cluster
from redirgate.gateway.limits import ClientLimits, HandshakeLimits
from redirgate.proto.tunnel.errors import SelectorError
from redirgate.proto.tunnel.selectors import DeviceSelector, parse_selector

__all__ = [
    "LOOPBACK_ONLY",
    "ConfigErrors",
    "ConfigProblem",
    "Endpoint",
    "GatewayConfig",
    "Route",
    "RouteTls",
    "load_config",
    "parse_endpoint",
]

LOOPBACK_ONLY = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int | None
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"


class ConfigErrors(Exception):
    """Every mistake found in one configuration file."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RouteTls:
    cert: Path
    key: Path
    ca: Path
    #: the hypervisor certificate names allowed on the route (empty: any from the CA)
    hypervisors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    name: str
    listen: Endpoint
    client: str
    device: DeviceSelector
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    protocol: str = "usbredir"
    tls: RouteTls | None = None
    #: True when `allow` was not given (the loopback-only default)
    allow_defaulted: bool = False
    #: serial routes: line settings the client applies for this route's consumer
    settings: str | None = None
    #: this route's grace period for resuming a channel (None: the gateway's `resume_grace_s`)
    resume_grace_s: float | None = None

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow)


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    tunnel_listen: Endpoint
    cert: Path
    key: Path
    ca: Path
    crl: Path | None  # None: revocation turned off (crl = "")
    admin_socket: Path
    public_host: str
    routes: tuple[Route, ...]
    handshake_timeout_s: float = 10.0
    heartbeat_interval_s: float = 10.0
    heartbeat_timeout_s: float = 30.0
    #: the gateway's own heartbeat goes to a client that spoke within the interval only every Nth
    #: interval (to time the round trip); 1: every interval
    heartbeat_rtt_every: int = 6
    hold_timeout_s: float = 0.0  # 0: hold a hypervisor connection until the device comes
    #: a plain USB route drops a hypervisor that sent no valid usbredir hello this soon
    usb_hello_timeout_s: float = 5.0
    #: how long a channel whose client connection broke waits to be resumed (0: not resumable)
    resume_grace_s: float = 60.0
    client_limits: ClientLimits = field(default_factory=ClientLimits)
    handshake_limits: HandshakeLimits = field(default_factory=HandshakeLimits)
    #: Prometheus /metrics and /healthz (off when None)
    metrics_listen: Endpoint | None = None
    #: one JSON line per attach, detach, refusal and revocation (off when None)
    audit_log: Path | None = None
    #: several gateways as one on Redis (None: this gateway runs alone)
    cluster: ClusterConfig | None = None
    #: a CRL past its nextUpdate: "refuse" new handshakes (default) or "warn" and accept them
    stale_crl: str = "refuse"
    extra: dict[str, Any] = field(default_factory=dict)

    def route(self, name: str) -> Route | None:
        for route in self.routes:
            if route.name == name:
                return route
        return None


#: where the service's config lives (install-service); its admin socket goes to the runtime folder
SYSTEM_CONFIG_DIR = Path("/etc/redirgate")
SYSTEM_ADMIN_SOCKET = Path("/run/redirgate/gateway.sock")


def default_admin_socket(config_path: Path) -> Path:
    """Beside the config, except for the system's config: /run/redirgate (the unit's RuntimeDirectory)."""
    if config_path.parent.absolute() == SYSTEM_CONFIG_DIR:
        return SYSTEM_ADMIN_SOCKET
    return config_path.parent / "gateway.sock"


def parse_endpoint(text: str, *, default_host: str = "0.0.0.0") -> Endpoint:
    """`HOST:PORT`, `[V6]:PORT` or `PORT`; ValueError with the reason."""
    if not isinstance(text, str):
        raise ValueError('must be a string like "HOST:PORT"')
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    host = host.strip()
    if host.startswith("["):
        host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} has no valid port (HOST:PORT, port 0-65535)")
    return Endpoint(host or default_host, int(port))


class _Lines:
    """Where tables and keys sit in the TOML text, for error messages.

    A light scan, not a parser: it follows `[table]` and `[[array]]` headers
    and `key =` lines, which is how configs are written; anything it cannot
    place falls back to the table's header line.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")

    def __init__(self, text: str) -> None:
        self.tables: dict[str, int] = {"": 1}
        self.keys: dict[tuple[str, str], int] = {}
        counts: dict[str, int] = {}
        current = ""
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                name = header.group(2)
                if header.group(1) == "[[":
                    index = counts.get(name, 0)
                    counts[name] = index + 1
                    current = f"{name}[{index}]"
                else:
                    parent, _, leaf = name.rpartition(".")
                    if parent and parent in counts:
                        current = f"{parent}[{counts[parent] - 1}].{leaf}"
                    else:
                        current = name
                self.tables.setdefault(current, number)
                continue
            key = self._KEY.match(line)
            if key:
                self.keys.setdefault((current, key.group(1)), number)

    def line(self, table: str, key: str | None = None) -> int | None:
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        return self.tables.get(table)


class _Loader:
    def __init__(self, path: Path, text: str, *, check_files: bool) -> None:
        self.path = path
        self.check_files = check_files
        self.base = path.parent
        self.lines = _Lines(text)
        self.problems: list[ConfigProblem] = []

    def problem(self, table: str, key: str, reason: str) -> None:
        label = f"{table}.{key}" if table and key else (key or table)
        self.problems.append(ConfigProblem(str(self.path), self.lines.line(table, key or None), label, reason))

    def unknown_keys(self, table: str, data: dict[str, Any], known: set[str]) -> None:
        for key in data:
            if key not in known:
                self.problem(table, key, f"unknown key (expected one of: {', '.join(sorted(known))})")

    def string(self, table: str, data: dict[str, Any], key: str, default: str | None = None) -> str | None:
        value = data.get(key, default)
        if value is None:
            self.problem(table, key, "missing")
            return None
        if not isinstance(value, str) or not value:
            self.problem(table, key, f"must be a non-empty string, not {value!r}")
            return None
        return value

    def path_value(
        self, table: str, data: dict[str, Any], key: str, *, required: bool = True, exists: bool = True
    ) -> Path | None:
        if key not in data and not required:
            return None
        text = self.string(table, data, key)
        if text is None:
            return None
        path = Path(text)
        if not path.is_absolute():
            path = self.base / path
        if exists and self.check_files and not path.exists():
            self.problem(table, key, f"file {path} does not exist")
        return path

    def number(self, table: str, data: dict[str, Any], key: str, default: float, *, minimum: float) -> float:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            self.problem(table, key, f"must be a number >= {minimum:g}, not {value!r}")
            return default
        return float(value)

    def endpoint(self, table: str, data: dict[str, Any], key: str) -> Endpoint | None:
        text = self.string(table, data, key)
        if text is None:
            return None
        try:
            return parse_endpoint(text)
        except ValueError as exc:
            self.problem(table, key, str(exc))
            return None


_GATEWAY_KEYS = {
    "tunnel_listen",
    "cert",
    "key",
    "ca",
    "crl",
    "stale_crl",
    "admin_socket",
    "public_host",
    "handshake_timeout_s",
    "heartbeat_interval_s",
    "heartbeat_timeout_s",
    "heartbeat_rtt_every",
    "hold_timeout_s",
    "usb_hello_timeout_s",
    "resume_grace_s",
    "max_devices_per_client",
    "max_ports_per_client",
    "inventory_updates_per_s",
    "inventory_update_burst",
    "max_handshakes",
    "max_handshakes_per_source",
    "limit_log_interval_s",
    "handshake_pacing_s",
    "metrics_listen",
    "audit_log",
}
_ROUTE_KEYS = {"name", "listen", "client", "device", "allow", "protocol", "tls", "settings", "resume_grace_s"}
#: A serial route's line settings, checked for shape here and fully by the
#: client that applies them: BAUD[,BITS PARITY STOP][,rtscts][,xonxoff][,dtr=on|off][,rts=on|off]
_SETTINGS = re.compile(
    r"^\d{2,8}(?:[,:][5-8][NEOMSneoms](?:1\.5|1|2))?(?:,(?:rtscts|xonxoff|dtr=(?:on|off)|rts=(?:on|off)))*$"
)
_TLS_KEYS = {"cert", "key", "ca", "hypervisors"}
_PROTOCOLS = {"usbredir": ("usb", "usb-port"), "raw": ("serial", "parallel"), "rfc2217": ("serial",)}


def load_config(path: str | Path, *, check_files: bool = True) -> GatewayConfig:
    """Load and validate; raises `ConfigErrors` listing every mistake."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigErrors([ConfigProblem(str(path), None, "", f"cannot read: {exc.strerror or exc}")]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        line = int(found.group(1)) if found else (text.count("\n") + 1 if "end of document" in str(exc) else None)
        raise ConfigErrors([ConfigProblem(str(path), line, "", f"not valid TOML: {exc}")]) from exc
    loader = _Loader(path, text, check_files=check_files)
    for table in data:
        if table not in ("gateway", "route", "cluster"):
            loader.problem("", table, "unknown top-level table (expected [gateway], [[route]] and [cluster])")
    gw = data.get("gateway")
    if not isinstance(gw, dict):
        loader.problem("", "gateway", "missing [gateway] table")
        raise ConfigErrors(loader.problems)
    loader.unknown_keys("gateway", gw, _GATEWAY_KEYS)
    tunnel = loader.endpoint("gateway", gw, "tunnel_listen")
    cert = loader.path_value("gateway", gw, "cert")
    key = loader.path_value("gateway", gw, "key")
    ca = loader.path_value("gateway", gw, "ca")
    crl = _crl(loader, gw)
    stale_crl = loader.string("gateway", gw, "stale_crl", default="refuse")
    if stale_crl not in ("refuse", "warn"):
        loader.problem("gateway", "stale_crl", f'must be "refuse" or "warn", not {stale_crl!r}')
    admin = (
        loader.path_value("gateway", gw, "admin_socket", exists=False)
        if "admin_socket" in gw
        else default_admin_socket(path)
    )
    public_host = loader.string("gateway", gw, "public_host", default="127.0.0.1")
    metrics = loader.endpoint("gateway", gw, "metrics_listen") if "metrics_listen" in gw else None
    audit = loader.path_value("gateway", gw, "audit_log", exists=False) if "audit_log" in gw else None
    timeouts = {
        name: loader.number("gateway", gw, name, default, minimum=minimum)
        for name, default, minimum in (
            ("handshake_timeout_s", 10.0, 0.1),
            ("heartbeat_interval_s", 10.0, 0.1),
            ("heartbeat_timeout_s", 30.0, 0.2),
            ("hold_timeout_s", 0.0, 0.0),
            ("resume_grace_s", 60.0, 0.0),
        )
    }
    bounds = {
        name: loader.number("gateway", gw, name, default, minimum=minimum)
        for name, default, minimum in (
            ("usb_hello_timeout_s", 5.0, 0.1),
            ("max_devices_per_client", 256, 1),
            ("max_ports_per_client", 32, 0),
            ("inventory_updates_per_s", 5.0, 0.1),
            ("inventory_update_burst", 20, 1),
            ("max_handshakes", 256, 1),
            ("max_handshakes_per_source", 16, 1),
            ("limit_log_interval_s", 60.0, 0.1),
            # an admitted handshake should take well under its deadline
            ("handshake_pacing_s", min(2.5, timeouts["handshake_timeout_s"] / 4), 0.0),
            ("heartbeat_rtt_every", 6, 1),
        )
    }
    for name in (
        "max_devices_per_client",
        "max_ports_per_client",
        "inventory_update_burst",
        "max_handshakes",
        "heartbeat_rtt_every",
    ):
        if bounds[name] != int(bounds[name]):
            loader.problem("gateway", name, f"must be a whole number, not {bounds[name]!r}")
    client_limits = ClientLimits(
        max_devices=int(bounds["max_devices_per_client"]),
        max_ports=int(bounds["max_ports_per_client"]),
        updates_per_s=bounds["inventory_updates_per_s"],
        update_burst=int(bounds["inventory_update_burst"]),
        log_interval_s=bounds["limit_log_interval_s"],
    )
    handshake_limits = HandshakeLimits(
        max_handshakes=int(bounds["max_handshakes"]),
        max_per_source=int(bounds["max_handshakes_per_source"]),
        log_interval_s=bounds["limit_log_interval_s"],
        pacing_s=bounds["handshake_pacing_s"],
    )
    if bounds["handshake_pacing_s"] >= timeouts["handshake_timeout_s"]:
        loader.problem("gateway", "handshake_pacing_s", "must be shorter than handshake_timeout_s (or 0: no pacing)")
    if timeouts["heartbeat_timeout_s"] <= timeouts["heartbeat_interval_s"]:
        loader.problem("gateway", "heartbeat_timeout_s", "must be longer than heartbeat_interval_s")

    routes_data = data.get("route", [])
    if not isinstance(routes_data, list):
        loader.problem("", "route", "must be an array of tables: [[route]]")
        routes_data = []
    routes: list[Route] = []
    names: dict[str, int] = {}
    listens: dict[tuple[str, int], str] = {}
    for index, rd in enumerate(routes_data):
        route = _load_route(loader, f"route[{index}]", rd)
        if route is None:
            continue
        if route.name in names:
            loader.problem(f"route[{index}]", "name", f"duplicate route name {route.name!r}")
        names[route.name] = index
        where = (route.listen.host, route.listen.port)
        if route.listen.port and where in listens:
            loader.problem(f"route[{index}]", "listen", f"{route.listen} is already used by route {listens[where]!r}")
        listens[where] = route.name
        routes.append(route)
    cluster = None
    if "cluster" in data:
        cluster = parse_cluster(
            data["cluster"],
            lambda key, reason: loader.problem("cluster", key, reason),
            loader.base,
            check_files=loader.check_files,
        )
    if loader.problems:
        raise ConfigErrors(loader.problems)
    assert tunnel and cert and key and ca and admin and public_host
    return GatewayConfig(
        path=path,
        tunnel_listen=tunnel,
        cert=cert,
        key=key,
        ca=ca,
        crl=crl,
        admin_socket=admin,
        public_host=public_host,
        routes=tuple(routes),
        metrics_listen=metrics,
        audit_log=audit,
        cluster=cluster,
        stale_crl=stale_crl or "refuse",
        handshake_timeout_s=timeouts["handshake_timeout_s"],
        heartbeat_interval_s=timeouts["heartbeat_interval_s"],
        heartbeat_timeout_s=timeouts["heartbeat_timeout_s"],
        heartbeat_rtt_every=int(bounds["heartbeat_rtt_every"]),
        hold_timeout_s=timeouts["hold_timeout_s"],
        resume_grace_s=timeouts["resume_grace_s"],
        usb_hello_timeout_s=bounds["usb_hello_timeout_s"],
        client_limits=client_limits,
        handshake_limits=handshake_limits,
    )


def _crl(loader: _Loader, gw: dict[str, Any]) -> Path | None:
    """The CRL's path; `crl = ""` turns revocation off (said at start).  Leaving
    the key out is a mistake: revocation is never off by omission."""
    if "crl" not in gw:
        loader.problem(
            "gateway",
            "crl",
            'missing: the CA\'s CRL file (crl.pem from `redirgate pki init`), or crl = "" to run without revocation',
        )
        return None
    if gw["crl"] == "":
        return None
    return loader.path_value("gateway", gw, "crl")


def _load_route(loader: _Loader, table: str, rd: Any) -> Route | None:
    if not isinstance(rd, dict):
        loader.problem(table, "", "must be a table")
        return None
    before = len(loader.problems)
    loader.unknown_keys(table, rd, _ROUTE_KEYS)
    name = loader.string(table, rd, "name")
    if name is not None and not _NAME.match(name):
        loader.problem(table, "name", f"{name!r}: use letters, digits, '_', '.', '-' (at most 64)")
    listen = loader.endpoint(table, rd, "listen")
    client = loader.string(table, rd, "client")
    device_text = loader.string(table, rd, "device")
    device = None
    if device_text is not None:
        try:
            device = parse_selector(device_text)
        except SelectorError as exc:
            loader.problem(table, "device", str(exc))
    protocol = rd.get("protocol")
    if protocol is None and device is not None:
        protocol = "usbredir" if device.scheme.value.startswith("usb") else "raw"
    if protocol is None:
        pass  # the device's own problem is reported
    elif protocol not in _PROTOCOLS:
        loader.problem(table, "protocol", f"{protocol!r}: expected one of {', '.join(_PROTOCOLS)}")
    elif device is not None and device.scheme.value not in _PROTOCOLS[protocol]:
        loader.problem(table, "protocol", f"{protocol} does not fit device {device.text}")
    allow_defaulted = "allow" not in rd
    allow: list[Any] = list(LOOPBACK_ONLY)
    if not allow_defaulted:
        raw = rd["allow"]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            loader.problem(table, "allow", 'must be a list of CIDR strings, e.g. ["10.0.0.0/8"]')
        else:
            allow = []
            for cidr in raw:
                try:
                    allow.append(ipaddress.ip_network(cidr, strict=False))
                except ValueError as exc:
                    loader.problem(table, "allow", f"{cidr!r} is not a network: {exc}")
    tls = None
    if "tls" in rd:
        td = rd["tls"]
        if not isinstance(td, dict):
            loader.problem(table, "tls", "must be a table with cert, key and ca")
        else:
            loader.unknown_keys(f"{table}.tls", td, _TLS_KEYS)
            t_cert = loader.path_value(f"{table}.tls", td, "cert")
            t_key = loader.path_value(f"{table}.tls", td, "key")
            t_ca = loader.path_value(f"{table}.tls", td, "ca")
            names = td.get("hypervisors", [])
            if not isinstance(names, list) or not all(isinstance(n, str) and _NAME.match(n) for n in names):
                loader.problem(f"{table}.tls", "hypervisors", 'must be a list of certificate names, e.g. ["kvm-01"]')
                names = []
            if t_cert and t_key and t_ca:
                tls = RouteTls(t_cert, t_key, t_ca, tuple(names))
    settings = rd.get("settings")
    if settings is not None:
        if device is not None and device.scheme.value != "serial":
            loader.problem(table, "settings", "line settings apply to serial:... devices only")
        elif not isinstance(settings, str) or not _SETTINGS.match(settings):
            loader.problem(
                table, "settings", f"{settings!r}: expected BAUD[,8N1][,rtscts][,xonxoff][,dtr=on|off][,rts=on|off]"
            )
    grace = loader.number(table, rd, "resume_grace_s", -1.0, minimum=0.0) if "resume_grace_s" in rd else None
    if len(loader.problems) != before:
        return None
    assert name and listen and client and device and isinstance(protocol, str)
    return Route(name, listen, client, device, tuple(allow), protocol, tls, allow_defaulted, settings, grace)
