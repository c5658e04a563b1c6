"""Everything `gateway run` would trip on, found before it binds anything.

`load_config` checks what the file says; `preflight(config)` checks what
the machine says about it: every listening port free and no two of them
overlapping (`127.0.0.1:P` beside `0.0.0.0:P`, a route on the tunnel's
port), each certificate, key, CA and the CRL parsing, each key matching its
certificate and readable by its owner only, the admin socket's folder
there and writable.  It returns `ConfigProblem`s in the config's own
terms (file, line, key, reason naming the port or file), so `gateway
check` prints them like load errors and `gateway run` refuses to start
with the same lines.  A reload passes the endpoints the running gateway
already holds as `held`: those are ours, not "in use".

Blocking (name resolution, test binds, file reads): call it before trio
runs, or from a worker thread.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from redirgate.gateway.config import ConfigProblem, Endpoint, GatewayConfig, _Lines
from redirgate.transport import CrlError, crl_problems, read_crl, tls_file_problems

__all__ = ["preflight"]

_WILDCARDS = {"0.0.0.0", "::"}


@dataclass(frozen=True)
class _Listen:
    table: str  # "gateway" or "route[3]"
    key: str  # "tunnel_listen" or "listen"
    what: str  # "the tunnel" or "route 'stick'"
    endpoint: Endpoint
    addresses: tuple[tuple[int, str], ...]  # (family, address) it binds


def preflight(config: GatewayConfig, *, held: Collection[Endpoint] = ()) -> list[ConfigProblem]:
    """Every problem `run` would meet with this config (see the module docstring)."""
    try:
        lines = _Lines(config.path.read_text())
    except OSError:
        lines = _Lines("")
    problems: list[ConfigProblem] = []

    def problem(table: str, key: str, reason: str) -> None:
        label = f"{table}.{key}" if key else table
        problems.append(ConfigProblem(str(config.path), lines.line(table, key or None), label, reason))

    for role, reason in tls_file_problems(cert=config.cert, key=config.key, ca=config.ca):
        problem("gateway", role, reason)
    if config.crl is not None:
        for reason in crl_problems(config.crl, config.ca, stale_ok=config.stale_crl == "warn"):
            problem("gateway", "crl", reason)
        revoked = _revoked_here(config.crl, config.ca, config.cert)
        if revoked:
            problem("gateway", "cert", revoked)
    for index, route in enumerate(config.routes):
        if route.tls is not None:
            for role, reason in tls_file_problems(cert=route.tls.cert, key=route.tls.key, ca=route.tls.ca):
                problem(f"route[{index}].tls", role, reason)
    _check_admin_socket(config.admin_socket, problem)

    if config.audit_log is not None:
        folder = config.audit_log.parent
        if not folder.is_dir():
            problem("gateway", "audit_log", f"folder {folder} does not exist")
        elif not os.access(config.audit_log if config.audit_log.exists() else folder, os.W_OK):
            problem("gateway", "audit_log", f"{config.audit_log} is not writable by this user")

    wanted: list[tuple[str, str, str, Endpoint]] = [("gateway", "tunnel_listen", "the tunnel", config.tunnel_listen)]
    if config.metrics_listen is not None:
        wanted.append(("gateway", "metrics_listen", "the metrics endpoint", config.metrics_listen))
    wanted += [(f"route[{i}]", "listen", f"route {r.name!r}", r.listen) for i, r in enumerate(config.routes)]
    listens: list[_Listen] = []
    for table, key, what, endpoint in wanted:
        try:
            addresses = _resolve(endpoint)
        except OSError as exc:
            problem(table, key, f"cannot resolve {endpoint.host!r}: {exc.strerror or exc}")
            continue
        listens.append(_Listen(table, key, what, endpoint, addresses))
    clashing: set[int] = set()
    for i, a in enumerate(listens):
        for b in listens[:i]:
            if _overlap(a, b):
                clashing.add(i)
                problem(
                    a.table,
                    a.key,
                    f"{a.endpoint} overlaps {b.what} on {b.endpoint}: two listeners on port "
                    f"{a.endpoint.port}; give {a.what} a port of its own",
                )
                break
    for i, item in enumerate(listens):
        if i in clashing or item.endpoint.port == 0 or item.endpoint in held:
            continue
        bind_reason = _bind_problem(item)
        if bind_reason:
            problem(item.table, item.key, bind_reason)
    return problems


def _revoked_here(crl: Path, ca: Path, cert: Path) -> str | None:
    """The gateway's own certificate on its CRL: its clients would refuse it."""
    try:
        authority = x509.load_pem_x509_certificate(ca.read_bytes())
        ours = x509.load_pem_x509_certificate(cert.read_bytes())
        revocations = read_crl(crl, authority)
    except (OSError, ValueError, CrlError):
        return None  # named by the other checks
    if not revocations.revokes(ours):
        return None
    return (
        f"{cert} (serial {ours.serial_number:x}) is revoked by {crl}: clients refuse this gateway; "
        "issue a new certificate (redirgate pki request / pki sign --gateway)"
    )


def _check_admin_socket(path: Path, problem: Callable[[str, str, str], None]) -> None:
    folder = path.parent
    if not folder.is_dir():
        problem("gateway", "admin_socket", f"folder {folder} does not exist (create it, or set admin_socket elsewhere)")
    elif not os.access(folder, os.W_OK | os.X_OK):
        problem("gateway", "admin_socket", f"folder {folder} is not writable by this user")
    elif path.exists() and not path.is_socket():
        problem("gateway", "admin_socket", f"{path} exists and is not a socket")
    elif len(os.fsencode(path)) > 107:
        problem("gateway", "admin_socket", f"{path} is longer than a Unix socket path may be (107 bytes)")


def _resolve(endpoint: Endpoint) -> tuple[tuple[int, str], ...]:
    """What `trio.serve_tcp(port, host=...)` binds: one socket per address."""
    host = endpoint.host or None
    infos = socket.getaddrinfo(host, endpoint.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return tuple(dict.fromkeys((family, str(sockaddr[0])) for family, _t, _p, _c, sockaddr in infos))


def _overlap(a: _Listen, b: _Listen) -> bool:
    if a.endpoint.port == 0 or a.endpoint.port != b.endpoint.port:
        return False
    for family_a, addr_a in a.addresses:
        for family_b, addr_b in b.addresses:
            if family_a == family_b and (addr_a == addr_b or addr_a in _WILDCARDS or addr_b in _WILDCARDS):
                return True
    return False


def _bind_problem(item: _Listen) -> str | None:
    """Bind (not listen) each address the way trio's listeners do; the first failure, named."""
    for family, address in item.addresses:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, item.endpoint.port))
            except OSError as exc:
                return _bind_reason(item.endpoint, address, exc)
    return None


def _bind_reason(endpoint: Endpoint, address: str, exc: OSError) -> str:
    where = f"{address}:{endpoint.port}" if ":" not in address else f"[{address}]:{endpoint.port}"
    if exc.errno == errno.EADDRINUSE:
        return f"port {endpoint.port} is in use ({where}: another program listens there)"
    if exc.errno == errno.EACCES:
        return f"port {endpoint.port} is below 1024: needs root or CAP_NET_BIND_SERVICE"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{address} is not an address of this host"
    return f"cannot listen on {where}: {exc.strerror or exc}"
