"""Every ordinary mistake ends in one line that names it, a non-zero exit, and no traceback.

A table of broken gateway configs, client configs and command lines, each
run as the real `redirgate` process.  A config mistake must be found by
`check` *and* stop `run` the same way (before it binds anything), so an
admin who ran `check` is never surprised by `run`.  Each case names what
the one line must say: the file, the key or port, and the cause.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from redirgate.cli.lab import GATEWAY_NAME, LabRoute, make_pki, write_client_config, write_gateway_config
from redirgate.gateway import pki
from tests.support.gateway_procs import running_gateway


def redirgate(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redirgate.cli", *args], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Lab:
    """A PKI made once; each case gets its own copy of the folder to break."""

    root: Path
    stack: contextlib.ExitStack

    @property
    def gateway(self) -> Path:
        return self.root / "gateway.toml"

    @property
    def client(self) -> Path:
        return self.root / "client-thin-01.toml"

    def edit(self, path: Path, old: str, new: str) -> Path:
        text = path.read_text()
        assert old in text, (old, text)
        path.write_text(text.replace(old, new, 1))
        return path

    def gw_key(self, key: str, value: str) -> Path:
        """Set `key = value` in [gateway] (replacing the line, or adding it)."""
        text = self.gateway.read_text()
        line = re.compile(rf"^{key} = .*$", re.M)
        if line.search(text):
            text = line.sub(f"{key} = {value}", text, count=1)
        else:
            text = text.replace("[gateway]\n", f"[gateway]\n{key} = {value}\n", 1)
        self.gateway.write_text(text)
        return self.gateway

    def routes(self, *routes: LabRoute, **options: object) -> Path:
        return write_gateway_config(self.root, list(routes), **options)  # type: ignore[arg-type]

    def file(self, relative: str) -> Path:
        return self.root / "pki" / relative

    def listening(self) -> int:
        """A port some other program listens on, for the duration of the case."""
        sock = self.stack.enter_context(socket.socket())
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        return int(sock.getsockname()[1])


GW_CERT = "gateways/gateway.local/server-cert.pem"
GW_KEY = "gateways/gateway.local/server-key.pem"
STICK = LabRoute("stick", "usb:1209:0001")


@dataclass(frozen=True)
class Case:
    id: str
    #: breaks the lab; returns the config path (gateway or client) or a full command line
    build: Callable[[Lab], Path | list[str]]
    #: what the one line must say (regular expressions, all of them)
    says: tuple[str, ...]
    client: bool = False


def _garbage(lab: Lab, relative: str) -> Path:
    lab.file(relative).write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    return lab.gateway


def _key_mismatch(lab: Lab) -> Path:
    shutil.copy(lab.file("clients/thin-01/client-key.pem"), lab.file(GW_KEY))
    return lab.gateway


def _foreign_crl(lab: Lab) -> Path:
    other = lab.root / "other"
    pki.init_ca(other)
    shutil.copy(other / "crl.pem", lab.file("crl.pem"))
    return lab.gateway


def _no_crl_key(lab: Lab) -> Path:
    lab.gateway.write_text(re.sub(r"^crl = .*\n", "", lab.gateway.read_text(), count=1, flags=re.M))
    return lab.gateway


def _stale_crl(lab: Lab) -> Path:
    pki.resign_crl(lab.root / "pki", now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3), valid_days=1)
    return lab.gateway


def _two_routes_one_port(lab: Lab) -> Path:
    port = free_port()
    return lab.routes(
        LabRoute("a", "usb:1209:0001", listen=f"127.0.0.1:{port}"),
        LabRoute("b", "usb:1209:0002", listen=f"0.0.0.0:{port}"),
    )


def _route_on_tunnel_port(lab: Lab) -> Path:
    port = free_port()
    return lab.routes(LabRoute("stick", "usb:1209:0001", listen=f"127.0.0.1:{port}"), tunnel_listen=f"0.0.0.0:{port}")


def _admin_socket_file(lab: Lab) -> Path:
    (lab.root / "plain-file").write_text("x")
    return lab.gw_key("admin_socket", f'"{lab.root / "plain-file"}"')


def _route_tls_mismatch(lab: Lab) -> Path:
    path = lab.routes(LabRoute("stick", "usb:1209:0001", tls=True))
    head, sep, tls = path.read_text().partition("[route.tls]")
    tls = tls.replace(str(lab.file(GW_KEY)), str(lab.file("clients/thin-01/client-key.pem")))
    path.write_text(head + sep + tls)
    return path


# fmt: off
# the table reads best one case per entry, its build and what the line must say together
CONFIG_CASES = [
    Case("config-missing", lambda lab: lab.root / "nope.toml", (r"nope\.toml", "cannot read")),
    Case("not-toml", lambda lab: lab.edit(lab.gateway, "[gateway]", "[gateway"), (r"gateway\.toml:1", "not valid TOML")),
    Case("no-gateway-table", lambda lab: (lab.gateway.write_text("# nothing yet\n"), lab.gateway)[1],
         ("missing \\[gateway\\]",)),
    Case("unknown-key", lambda lab: lab.gw_key("tunnel_port", "7443"), ("gateway.tunnel_port", "unknown key")),
    Case("tunnel-port-out-of-range", lambda lab: lab.gw_key("tunnel_listen", '"127.0.0.1:99999"'),
         ("gateway.tunnel_listen", "no valid port")),
    Case("cert-missing", lambda lab: (lab.file(GW_CERT).unlink(), lab.gateway)[1], ("gateway.cert", "does not exist")),
    Case("cert-garbage", lambda lab: _garbage(lab, GW_CERT), ("gateway.cert", "server-cert.pem holds no PEM certificate")),
    Case("key-garbage", lambda lab: _garbage(lab, GW_KEY), ("gateway.key", "holds no PEM private key")),
    Case("key-does-not-match", _key_mismatch, ("gateway.key", "does not match the certificate")),
    Case("ca-garbage", lambda lab: _garbage(lab, "ca-cert.pem"), ("gateway.ca", "ca-cert.pem holds no PEM certificate")),
    Case("crl-garbage", lambda lab: _garbage(lab, "crl.pem"), ("gateway.crl", "crl.pem holds no PEM CRL")),
    Case("crl-of-another-ca", _foreign_crl, ("gateway.crl", "not signed by the CA")),
    Case("crl-path-typo", lambda lab: lab.gw_key("crl", f'"{lab.file("crl.pen")}"'), ("gateway.crl", "crl.pen does not exist")),
    Case("crl-key-left-out", _no_crl_key, ("gateway.crl", "missing: the CA's CRL file", 'crl = "" to run without')),
    Case("crl-stale", _stale_crl, ("gateway.crl", "is stale", "pki crl", 'stale_crl = "warn"')),
    Case("gateway-cert-revoked", lambda lab: (pki.revoke(lab.root / "pki", GATEWAY_NAME, kind=pki.CertKind.GATEWAY), lab.gateway)[1],
         ("gateway.cert", "is revoked by .*crl.pem", "clients refuse this gateway")),
    Case("stale-crl-policy-unknown", lambda lab: lab.gw_key("stale_crl", '"ignore"'), ("gateway.stale_crl", "must be")),
    Case("key-readable-by-others", lambda lab: (lab.file(GW_KEY).chmod(0o644), lab.gateway)[1],
         ("gateway.key", "may be read by group or others", "0644")),
    Case("admin-folder-missing", lambda lab: lab.gw_key("admin_socket", f'"{lab.root / "run" / "gw.sock"}"'),
         ("gateway.admin_socket", "folder .*/run does not exist")),
    Case("admin-socket-is-a-file", _admin_socket_file, ("gateway.admin_socket", "is not a socket")),
    Case("port-in-use", lambda lab: lab.routes(LabRoute("stick", "usb:1209:0001", listen=f"127.0.0.1:{lab.listening()}")),
         ("route\\[0\\].listen", "port \\d+ is in use")),
    Case("tunnel-port-in-use", lambda lab: lab.gw_key("tunnel_listen", f'"127.0.0.1:{lab.listening()}"'),
         ("gateway.tunnel_listen", "port \\d+ is in use")),
    Case("route-on-the-tunnel-port", _route_on_tunnel_port, ("route\\[0\\].listen", "overlaps the tunnel")),
    Case("loopback-beside-wildcard", _two_routes_one_port, ("route\\[1\\].listen", "overlaps route 'a'")),
    Case("same-listen-twice", lambda lab: lab.routes(LabRoute("a", "usb:1209:0001", listen="127.0.0.1:45001"),
                                                     LabRoute("b", "usb:1209:0002", listen="127.0.0.1:45001")),
         ("route\\[1\\].listen", "already used by route 'a'")),
    Case("address-not-on-this-host", lambda lab: lab.routes(LabRoute("stick", "usb:1209:0001", listen="192.0.2.1:45002")),
         ("route\\[0\\].listen", "192.0.2.1 is not an address of this host")),
    Case("bad-device", lambda lab: lab.routes(LabRoute("stick", "usb:12")), ("route\\[0\\].device",)),
    Case("bad-allow", lambda lab: lab.routes(LabRoute("stick", "usb:1209:0001", allow=["10.0.0.300/8"])),
         ("route\\[0\\].allow", "is not a network")),
    Case("duplicate-route-name", lambda lab: lab.routes(STICK, STICK), ("route\\[1\\].name", "duplicate route name")),
    Case("heartbeat-timeout-too-short", lambda lab: lab.routes(STICK, heartbeat_interval_s=10, heartbeat_timeout_s=5),
         ("heartbeat_timeout_s", "longer than heartbeat_interval_s")),
    Case("protocol-does-not-fit", lambda lab: lab.routes(LabRoute("stick", "usb:1209:0001", protocol="raw")),
         ("route\\[0\\].protocol", "does not fit")),
    Case("route-tls-key-mismatch", _route_tls_mismatch, ("route\\[0\\].tls.key", "does not match")),
    # the client
    Case("client-no-gateway", lambda lab: lab.edit(lab.client, 'gateway = "127.0.0.1:7443"\n', ""), ("client.gateway", "missing"), client=True),
    Case("client-cert-garbage", lambda lab: (_garbage(lab, "clients/thin-01/client-cert.pem"), lab.client)[1],
         ("client.cert", "holds no PEM certificate"), client=True),
    Case("client-key-mismatch", lambda lab: (shutil.copy(lab.file(GW_KEY), lab.file("clients/thin-01/client-key.pem")), lab.client)[1],
         ("client.key", "does not match"), client=True),
    Case("client-key-readable", lambda lab: (lab.file("clients/thin-01/client-key.pem").chmod(0o640), lab.client)[1],
         ("client.key", "may be read by group or others"), client=True),
    Case("client-crl-typo", lambda lab: lab.edit(lab.client, "[export]", f'crl = "{lab.file("crl.pen")}"\n\n[export]'),
         ("client.crl", "crl.pen does not exist"), client=True),
    Case("client-crl-of-another-ca", lambda lab: lab.edit(lab.client, "[export]", f'crl = "{_foreign_crl(lab) and lab.file("crl.pem")}"\n\n[export]'),
         ("client.crl", "not signed by the CA"), client=True),
    Case("client-image-missing", lambda lab: lab.edit(lab.client, "virtual = []", 'virtual = ["virtual:storage:gone.img"]'),
         ("export.virtual", "gone.img", "(?i)no such file"), client=True),
]

COMMAND_CASES = [
    Case("serve-usb-image-missing", lambda lab: ["client", "serve-usb", "--listen", "127.0.0.1:0",
                                                 f"virtual:storage:{lab.root / 'gone.img'}"],
         ("gone.img", "(?i)no such file")),
    Case("snippet-bad-qemu-version", lambda lab: ["gateway", "snippet", "--config", str(lab.gateway), "stick",
                                                  "--qemu", "--qemu-version", "nine"],
         ("--qemu-version", "'nine' is not a QEMU version")),
    Case("snippet-unknown-route", lambda lab: ["gateway", "snippet", "--config", str(lab.gateway), "nope", "--qemu"],
         ("no route 'nope'", "gateway.toml")),
    Case("status-no-gateway", lambda lab: ["gateway", "status", "--config", str(lab.gateway)],
         ("no gateway answers on .*gateway.sock",)),
    Case("pki-without-ca", lambda lab: ["pki", "issue-client", "--dir", str(lab.root / "empty"), "thin-09"],
         ("empty", "ca")),
    Case("client-check-default-config-missing", lambda lab: ["client", "check", "--config", str(lab.root / "c.toml")],
         ("c.toml", "cannot read")),
]
# fmt: on


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    make_pki(root)
    write_gateway_config(root, [STICK])
    write_client_config(root, 7443)
    return root


@pytest.fixture
def lab(pristine: Path, tmp_path: Path) -> Iterator[Lab]:
    root = tmp_path / "lab"
    shutil.copytree(pristine, root)
    # the configs name absolute paths inside the pristine copy: point them here
    for name in ("gateway.toml", "client-thin-01.toml"):
        (root / name).write_text((root / name).read_text().replace(str(pristine), str(root)))
    with contextlib.ExitStack() as stack:
        yield Lab(root, stack)


def assert_one_line(out: subprocess.CompletedProcess[str], says: tuple[str, ...]) -> None:
    assert out.returncode != 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    # argparse puts its usage above its one error line
    lines = [line for line in out.stderr.splitlines() if line and not line.startswith(("usage:", " "))]
    assert len(lines) == 1, out.stderr
    for pattern in says:
        assert re.search(pattern, lines[0]), (pattern, lines[0])


@pytest.mark.parametrize("case", CONFIG_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("command", ["check", "run"])
def test_a_broken_config_is_one_line_in_check_and_run(lab: Lab, case: Case, command: str) -> None:
    config = case.build(lab)
    assert isinstance(config, Path)
    out = redirgate("client" if case.client else "gateway", command, "--config", str(config))
    assert_one_line(out, case.says)
    assert "tunnel " not in out.stdout  # run never got as far as listening


@pytest.mark.parametrize("case", COMMAND_CASES, ids=lambda c: c.id)
def test_a_broken_command_line_is_one_line(lab: Lab, case: Case) -> None:
    argv = case.build(lab)
    assert isinstance(argv, list)
    assert_one_line(redirgate(*argv), case.says)


def test_the_table_is_big_enough() -> None:
    assert len(CONFIG_CASES) + len(COMMAND_CASES) >= 25


def test_the_pristine_lab_passes_check(lab: Lab) -> None:
    """The cases break a config that is otherwise good."""
    for kind, config in (("gateway", lab.gateway), ("client", lab.client)):
        out = redirgate(kind, "check", "--config", str(config))
        assert out.returncode == 0 and ": ok:" in out.stdout, out.stderr


def test_probe_refused_by_an_allow_list_and_status_into_a_closed_pipe(lab: Lab) -> None:
    config = lab.routes(LabRoute("far", "usb:1209:0001", allow=["10.0.0.0/8"]))
    with running_gateway(config, lab.root / "gateway.log") as gw:
        probed = redirgate("probe", f"127.0.0.1:{gw.routes['far']}", "--timeout", "10")
        assert_one_line(probed, (f"127.0.0.1:{gw.routes['far']}", "allow list"))
        # `gateway status | head` where head has already gone: no BrokenPipeError
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            status = redirgate("gateway", "status", "--config", str(config), stdout=write_end)
        finally:
            os.close(write_end)
        assert status.returncode != 0 and status.stderr == "", status.stderr
