"""Every refusal of the gateway, against a real in-process gateway and client.

Each test runs the lab (`tests.support.tunnel_lab`: a Gateway and a real
TunnelClient "thin-01" exporting an emulated keyboard on route "kbd", mutual
TLS on 127.0.0.1), does one hostile thing, and checks three things:

* the hostile connection ends (the test reads it to the end under a deadline);
* the gateway logs exactly one clear line for it, naming the peer (our
  local address, and the certificate identity where there is one) and the
  reason;
* nothing else is disturbed: the legitimate client is still online on its
  first session (it never reconnected) and a probe through its route works.

Hostile thin clients are built here from the real codec
(`TunnelConnection`, `AttachConnection`, `UsbredirConnection`), never from
canned bytes, except where the point is bytes the codec would never send.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import msgpack
import pytest
import trio

from redirgate.cli.lab import GATEWAY_NAME, LabRoute
from redirgate.gateway import pki
from redirgate.proto import tunnel as t
from redirgate.proto.usbredir import CLOSED, NEED_DATA, MsgType, Role, Status, UsbredirConnection
from redirgate.proto.usbredir.messages import Hello
from redirgate.transport import ClientContext, TlsRefused, ZeroCopyTLSStream, client_context
from redirgate.vmside.guest import UsbredirGuest
from redirgate.vmside.probe import probe
from tests.support.tunnel_lab import Lab, running_lab
from tests.support.waiting import until

REVOCATION_LOG = "redirgate.gateway.pki.revocation"
TUNNEL_LOG = "redirgate.gateway.tunnel_server"
ROUTE_LOG = "redirgate.gateway.route_server"
KBD = LabRoute("kbd", "usb:1209:0002")
#: a route to a device of the hostile client "thin-02"
EVIL = LabRoute("evil", "usb:1209:0001", client="thin-02")
EVIL_DEVICE = t.DeviceEntry(id="usb:1209:0001:X1", kind="usb", vendor_id=0x1209, product_id=1, serial="X1")
#: a safety net for a refused connection's end, not a budget: a loaded machine is slow, not wrong
END_WITHIN_S = 60.0


# --------------------------------------------------------------------- the lab
@asynccontextmanager
async def lab_with(tmp_path: Path, *extra: LabRoute, **options: float) -> AsyncIterator[Lab]:
    async with running_lab(tmp_path, [KBD, *extra], virtual=["virtual:keyboard"], **options) as lab:
        yield lab


def pki_dir(lab: Lab) -> Path:
    return lab.directory / "pki"


def context_for(lab: Lab, name: str, *, base: Path | None = None) -> ClientContext:
    """A client context with `name`'s certificate from `base` (default: the lab's
    PKI) that trusts the lab's CA."""
    cdir = pki.client_dir(base or pki_dir(lab), name)
    return client_context(cdir / "client-cert.pem", cdir / "client-key.pem", pki_dir(lab) / "ca-cert.pem", GATEWAY_NAME)


async def route_idle(lab: Lab, name: str) -> None:
    await until(lambda: {r["name"]: r for r in lab.gateway.snapshot()["routes"]}[name]["state"] == "idle", "idle")


async def assert_undisturbed(lab: Lab, *, also_online: Sequence[str] = ()) -> None:
    """The legitimate client never noticed: same session, still online, its route works."""
    await route_idle(lab, "kbd")  # a hypervisor that just left may not be noticed yet
    result = await probe("127.0.0.1", lab.route_port("kbd"), timeout_s=60)
    assert (result.vendor_id, result.product_id) == (0x1209, 0x0002)
    online = {c["identity"] for c in lab.gateway.snapshot()["clients"]}
    assert {"thin-01", *also_online} <= online, online
    assert lab.client is not None and lab.client.online and lab.client.sessions == 1


# --------------------------------------------------------------------- logs
@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


class Logs:
    """The log records a test produced from one point on."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.start = len(caplog.records)

    def lines(self, logger: str, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.caplog.records[self.start :] if r.name == logger and r.levelno >= level]

    async def wait_for(self, logger: str, *words: str, level: int = logging.WARNING) -> str:
        """The first line from `logger` at `level` or above holding every word."""
        found: list[str] = []

        def logged() -> bool:
            found.extend(line for line in self.lines(logger, level) if all(w in line for w in words))
            return bool(found)

        await until(logged, f"a log line with {words}")  # logging announces nothing to wait on
        return found[0]

    async def one_refusal(self, logger: str, peer: str, *words: str, level: int = logging.WARNING) -> str:
        """Exactly one line at `level`+ from `logger` during the case, naming `peer` and the reason."""
        line = await self.wait_for(logger, peer, *words, level=level)
        assert self.lines(logger, level) == [line], self.lines(logger, level)
        return line


# --------------------------------------------------------------------- peers
def local_label(sock: socket.socket | trio.socket.SocketType) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


async def dial_tls(port: int, context: ClientContext) -> tuple[ZeroCopyTLSStream, str]:
    """TLS to the tunnel port; (stream, our "host:port" as the gateway sees it).
    TlsRefused if the handshake itself fails (the socket is closed then)."""
    sock = socket.create_connection(("127.0.0.1", port))
    me = local_label(sock)
    stream = ZeroCopyTLSStream(sock, context.ssl_context, server_side=False, server_hostname=context.server_name)
    try:
        await stream.do_handshake(END_WITHIN_S)
    except BaseException:
        await stream.aclose()
        raise
    return stream, me


async def read_to_end(stream: trio.abc.Stream) -> tuple[bytes, str]:
    """Everything the peer still sends, and how the connection ended."""
    received = bytearray()
    with trio.fail_after(END_WITHIN_S):
        try:
            while chunk := await stream.receive_some(65536):
                received += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            return bytes(received), f"broken: {exc}"
    return bytes(received), "eof"


async def refused_tls(lab: Lab, context: ClientContext, *, told: str = "") -> str:
    """A TLS attempt the gateway must refuse; our address.  TLS 1.3 clients
    finish their handshake before the server judges their certificate, so the
    refusal may arrive as a failed handshake or as an alert/close right after
    (after an `unauthorized` Error holding `told`, when given: a revoked client is told)."""
    sock = socket.create_connection(("127.0.0.1", lab.tunnel_port))
    me = local_label(sock)
    stream = ZeroCopyTLSStream(sock, context.ssl_context, server_side=False, server_hostname=context.server_name)
    try:
        try:
            await stream.do_handshake(END_WITHIN_S)
        except TlsRefused:
            return me
        received, _how = await read_to_end(stream)
        if told:
            conn = t.TunnelConnection("client")
            conn.receive_data(received)
            error = conn.next_event()
            assert isinstance(error, t.Error) and error.code == "unauthorized" and told in error.message, error
        else:
            assert received == b"", received
    finally:
        await stream.aclose()
    return me


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


class FakeClient:
    """A thin client written with the real codec, doing what the test says.

    `connect()` sends ClientHello and reads the GatewayHello; `serve()` answers
    heartbeats and collects OpenChannel / CloseChannel; `attach()` dials a
    data connection and sends an Attach.
    """

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.context = context_for(lab, name)
        self.conn = t.TunnelConnection("client")
        self.stream: ZeroCopyTLSStream | None = None
        self.me = ""
        self.opens: list[t.OpenChannel] = []
        self.closes: list[t.CloseChannel] = []
        self._news = trio.Event()

    async def connect(self, *, inventory: Sequence[t.DeviceEntry] | None = None) -> None:
        self.stream, self.me = await dial_tls(self.lab.tunnel_port, self.context)
        await self.send(t.ClientHello(software="fake client"))
        assert isinstance(await self.next_event(), t.GatewayHello)
        if inventory is not None:
            await self.send(t.Inventory(tuple(inventory)))

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()

    async def send(self, message: t.TunnelMessage) -> None:
        assert self.stream is not None
        await self.stream.send_all(self.conn.send(message))

    async def next_event(self) -> t.Event:
        assert self.stream is not None
        while (event := self.conn.next_event()) is t.NEED_DATA:
            self.conn.receive_data(await self.stream.receive_some(65536))
        return event

    async def serve(self) -> None:
        while True:
            event = await self.next_event()
            if event is t.CLOSED:
                return
            if isinstance(event, t.Heartbeat):
                await self.send(t.HeartbeatAck(event.seq))
            elif isinstance(event, t.OpenChannel):
                self.opens.append(event)
            elif isinstance(event, t.CloseChannel):
                self.closes.append(event)
            self._news.set()
            self._news = trio.Event()

    async def next_open(self) -> t.OpenChannel:
        with trio.fail_after(END_WITHIN_S):
            while not self.opens:
                await self._news.wait()
        return self.opens.pop(0)

    async def wait_closed(self, channel_id: int) -> t.CloseChannel:
        with trio.fail_after(END_WITHIN_S):
            while True:
                for close in self.closes:
                    if close.channel_id == channel_id:
                        return close
                await self._news.wait()

    async def attach(self, channel_id: int, token: bytes) -> tuple[ZeroCopyTLSStream, str, t.AttachResult, bytes]:
        """(data stream, our address, the gateway's answer, bytes after it)."""
        stream, me = await dial_tls(self.lab.tunnel_port, self.context)
        attach = t.AttachConnection("client")
        await stream.send_all(attach.send(t.Attach(channel_id, token)))
        while (result := attach.next_event()) is t.NEED_DATA:
            attach.receive_data(await stream.receive_some(65536))
        assert isinstance(result, t.AttachResult), result
        trailing, _eof = attach.trailing_data()
        return stream, me, result, trailing


@asynccontextmanager
async def hostile(lab: Lab, name: str = "thin-02") -> AsyncIterator[FakeClient]:
    """A FakeClient `name` (certificate issued now by the lab's CA), online,
    exporting EVIL_DEVICE, served in the background."""
    pki.issue_client(pki_dir(lab), name)
    fake = FakeClient(lab, name)
    try:
        await fake.connect(inventory=[EVIL_DEVICE])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake.serve)
            yield fake
            nursery.cancel_scope.cancel()
    finally:
        await fake.aclose()


# ============================================================ TLS refusals
async def test_tls_without_a_client_certificate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with lab_with(tmp_path) as lab:
        logs = Logs(caplog)
        bare = ssl.create_default_context(cafile=str(pki_dir(lab) / "ca-cert.pem"))  # trusts the CA, no cert
        me = await refused_tls(lab, ClientContext(bare, GATEWAY_NAME))
        await logs.one_refusal(TUNNEL_LOG, f"refused {me}", "no client certificate")
        await assert_undisturbed(lab)
        assert lab.gateway.snapshot()["tunnel_refusals"] == 1


async def test_client_certificate_from_another_ca(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with lab_with(tmp_path) as lab:
        logs = Logs(caplog)
        other = tmp_path / "other-pki"
        pki.init_ca(other, common_name="redirgate CA")  # even the same CA name
        pki.issue_client(other, "thin-01")  # ... and the legitimate client's name
        me = await refused_tls(lab, context_for(lab, "thin-01", base=other))
        await logs.one_refusal(TUNNEL_LOG, f"refused {me}", "certificate not signed by our CA")
        await assert_undisturbed(lab)


async def test_revoked_certificate_is_refused_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with lab_with(tmp_path) as lab:
        pki.issue_client(pki_dir(lab), "thin-02")
        # accepted before the revocation ...
        before = FakeClient(lab, "thin-02")
        await before.connect(inventory=[])
        await until(lambda: "thin-02" in {c["identity"] for c in lab.gateway.snapshot()["clients"]}, "online")
        await before.aclose()
        logs = Logs(caplog)
        entry = pki.revoke(pki_dir(lab), "thin-02")
        # ... refused by the same running gateway after it
        me = await refused_tls(lab, context_for(lab, "thin-02"), told="certificate revoked")
        await logs.one_refusal(TUNNEL_LOG, f"refused {me}", "certificate revoked", f"{entry.serial:x}")
        await assert_undisturbed(lab)


def stale_crl(lab: Lab) -> None:
    """The CA's CRL, signed again (a higher number) but with its nextUpdate passed."""
    pki.resign_crl(pki_dir(lab), now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3), valid_days=1)


def metric(lab: Lab, name: str, **labels: str) -> float | None:
    return lab.gateway.events.registry.get_sample_value(name, labels)


async def test_a_stale_crl_refuses_every_new_handshake_and_live_sessions_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with lab_with(tmp_path) as lab:
        logs = Logs(caplog)
        stale_crl(lab)
        # a client the CA never revoked is refused: the gateway cannot know what was revoked since
        me = await refused_tls(lab, context_for(lab, "thin-01"), told="our CRL is stale")
        await logs.one_refusal(TUNNEL_LOG, f"refused {me}", "our CRL is stale", "past its nextUpdate")
        stale = [r.getMessage() for r in caplog.records if r.name == REVOCATION_LOG and "is stale" in r.getMessage()]
        assert len(stale) == 1 and "every new handshake is refused" in stale[0] and "pki crl" in stale[0], stale
        assert metric(lab, "redirgate_tls_handshake_failures_total", reason="crl_stale") == 1
        assert metric(lab, "redirgate_crl_stale") == 1
        assert lab.client is not None and lab.client.online and lab.client.sessions == 1  # live sessions go on
        pki.resign_crl(pki_dir(lab))  # a fresh CRL: new handshakes are accepted again
        stream, _me = await dial_tls(lab.tunnel_port, context_for(lab, "thin-01"))
        await stream.aclose()
        assert metric(lab, "redirgate_crl_stale") == 0
        await assert_undisturbed(lab)


async def test_stale_crl_warn_accepts_handshakes_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with lab_with(tmp_path, stale_crl='"warn"') as lab:  # type: ignore[arg-type]  # a TOML string
        stale_crl(lab)
        pki.issue_client(pki_dir(lab), "thin-02")
        fake = FakeClient(lab, "thin-02")
        await fake.connect(inventory=[])
        await fake.aclose()
        warned = [r for r in caplog.records if r.name == REVOCATION_LOG and 'stale_crl = "warn"' in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING, warned
        assert metric(lab, "redirgate_crl_stale_accepted_total") == 1
        assert metric(lab, "redirgate_tls_handshake_failures_total", reason="crl_stale") is None


async def test_expired_certificate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with lab_with(tmp_path) as lab:
        logs = Logs(caplog)
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        issued = pki.issue_client(pki_dir(lab), "thin-old", now=long_ago, valid_days=1)
        assert issued.not_valid_after < dt.datetime.now(dt.UTC)
        me = await refused_tls(lab, context_for(lab, "thin-old"))
        await logs.one_refusal(TUNNEL_LOG, f"refused {me}", "certificate expired")
        await assert_undisturbed(lab)


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: gateway.local\r\n\r\n", b"\x00\x01\x02\x03garbage" * 8],
    ids=["http", "binary"],
)
async def test_garbage_instead_of_tls(tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: bytes) -> None:
    async with lab_with(tmp_path) as lab:
        logs = Logs(caplog)
        tcp = await trio.open_tcp_stream("127.0.0.1", lab.tunnel_port)
        async with tcp:
            me = local_label(tcp.socket)
            await tcp.send_all(garbage)
            await read_to_end(tcp)
        await logs.one_refusal(TUNNEL_LOG, f"refused {me}", "not TLS (garbage)")
        await assert_undisturbed(lab)


async def test_stalled_handshake_is_dropped_after_the_timeout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with lab_with(tmp_path, handshake_timeout_s=1.0) as lab:
        logs = Logs(caplog)
        tcp = await trio.open_tcp_stream("127.0.0.1", lab.tunnel_port)
        async with tcp:
            me = local_label(tcp.socket)
            started = trio.current_time()
            received, how = await read_to_end(tcp)  # we send nothing at all
            elapsed = trio.current_time() - started
        assert received == b"" and how == "eof", how
        assert elapsed >= 0.9, elapsed  # not before the timeout (its end is read_to_end's to see)
        await logs.one_refusal(TUNNEL_LOG, f"refused {me}", "handshake timed out")
        await assert_undisturbed(lab)


# ======================================================= protocol refusals
OVERSIZED = struct.pack(">I", t.DEFAULT_MAX_MESSAGE_SIZE + 1)  # a length prefix only: nothing else is waited for
NOT_MSGPACK = frame(b"\xc1\xc1\xc1")  # 0xc1 is "never used" in msgpack
UNKNOWN_KIND = frame(msgpack.packb({"kind": "launch_missiles", "count": 1}))
BAD_MESSAGES = pytest.mark.parametrize(
    ("wire", "words"),
    [(OVERSIZED, "outside 1..1048576"), (NOT_MSGPACK, "malformed msgpack"), (UNKNOWN_KIND, "launch_missiles")],
    ids=["oversized", "not-msgpack", "unknown-kind"],
)


@BAD_MESSAGES
async def test_bad_first_message(tmp_path: Path, caplog: pytest.LogCaptureFixture, wire: bytes, words: str) -> None:
    """A valid certificate - the legitimate client's own - then a bad first frame."""
    async with lab_with(tmp_path) as lab:
        logs = Logs(caplog)
        stream, me = await dial_tls(lab.tunnel_port, context_for(lab, "thin-01"))
        try:
            await stream.send_all(wire)
            received, _how = await read_to_end(stream)
        finally:
            await stream.aclose()
        assert received == b""
        await logs.one_refusal(TUNNEL_LOG, f"thin-01 ({me}) broke the protocol", words)
        await assert_undisturbed(lab)


@BAD_MESSAGES
async def test_bad_message_in_a_control_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, wire: bytes, words: str
) -> None:
    """A second client says hello properly, then breaks the protocol: only its session ends."""
    async with lab_with(tmp_path) as lab:
        pki.issue_client(pki_dir(lab), "thin-02")
        fake = FakeClient(lab, "thin-02")
        try:
            await fake.connect(inventory=[])
            logs = Logs(caplog)
            assert fake.stream is not None
            await fake.stream.send_all(wire)
            with trio.fail_after(END_WITHIN_S):
                error = await fake.next_event()
                assert isinstance(error, t.Error) and error.code == t.ErrorCode.PROTOCOL, error
                assert words in error.message
                assert await fake.next_event() is t.CLOSED
        finally:
            await fake.aclose()
        await logs.one_refusal(TUNNEL_LOG, f"thin-02 ({fake.me}) broke the protocol", words)
        await logs.wait_for(TUNNEL_LOG, "client thin-02 offline", "protocol error", level=logging.INFO)
        await assert_undisturbed(lab)
        assert "thin-02" not in {c["identity"] for c in lab.gateway.snapshot()["clients"]}


# ========================================================= attach refusals
async def test_attach_for_no_pending_channel(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The legitimate client's certificate, an Attach with a random token and no channel waiting."""
    async with lab_with(tmp_path) as lab:
        logs = Logs(caplog)
        stream, me = await dial_tls(lab.tunnel_port, context_for(lab, "thin-01"))
        try:
            attach = t.AttachConnection("client")
            await stream.send_all(attach.send(t.Attach(channel_id=1, token=os.urandom(32))))
            received, _how = await read_to_end(stream)
        finally:
            await stream.aclose()
        attach.receive_data(received)
        attach.receive_data(b"")
        result = attach.next_event()
        assert isinstance(result, t.AttachResult) and not result.ok, result
        assert "channel 1" in result.reason
        assert attach.trailing_data() == (b"", True)  # and then the gateway closed
        await logs.one_refusal(TUNNEL_LOG, f"refused data connection from thin-01 ({me})", "not pending")
        await assert_undisturbed(lab)


async def test_wrong_attach_token_for_a_pending_channel(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A channel is really waiting; a data connection with a wrong token is refused
    and the channel still waits for the right one."""
    async with lab_with(tmp_path, EVIL) as lab, hostile(lab) as fake:
        guest_tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("evil"))
        async with guest_tcp:
            guest = UsbredirConnection(Role.GUEST)
            await guest_tcp.send_all(guest.hello_bytes())
            request = await fake.next_open()
            await fake.send(t.ChannelOpened(request.channel_id))
            logs = Logs(caplog)
            wrong = bytes(b ^ 0xFF for b in request.token)
            stream, me, result, _ = await fake.attach(request.channel_id, wrong)
            try:
                assert not result.ok and "wrong attach token" in result.reason, result
                received, _how = await read_to_end(stream)
                assert received == b""
            finally:
                await stream.aclose()
            await logs.one_refusal(TUNNEL_LOG, f"refused data connection from thin-02 ({me})", "wrong attach token")
            # the right token still attaches, and the channel carries bytes
            stream, _me, result, _ = await fake.attach(request.channel_id, request.token)
            try:
                assert result.ok, result
                host_hello = UsbredirConnection(Role.HOST).hello_bytes()
                await stream.send_all(host_hello)
                got = bytearray()
                with trio.fail_after(END_WITHIN_S):
                    while len(got) < len(host_hello):
                        got += await guest_tcp.receive_some(65536)
                assert got == host_hello
            finally:
                await stream.aclose()
        await assert_undisturbed(lab, also_online=["thin-02"])


# ========================================================== route refusals
async def test_hypervisor_address_not_allowed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lan_only = LabRoute("lan-only", "usb:1209:0002", allow=["10.0.0.0/8"])
    async with lab_with(tmp_path, lan_only) as lab:
        logs = Logs(caplog)
        tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("lan-only"))
        async with tcp:
            me = local_label(tcp.socket)
            await tcp.send_all(UsbredirConnection(Role.GUEST).hello_bytes())
            received, _how = await read_to_end(tcp)
        assert received == b""
        await logs.one_refusal(ROUTE_LOG, f"route lan-only: refused hypervisor {me}", "not allowed", "10.0.0.0/8")
        await assert_undisturbed(lab)
        routes = {r["name"]: r for r in lab.gateway.snapshot()["routes"]}
        assert routes["lan-only"]["refusals"] == 1 and routes["lan-only"]["channels_served"] == 0
        assert not logs.lines(TUNNEL_LOG)


async def test_second_hypervisor_on_a_busy_route(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with lab_with(tmp_path) as lab:
        first_tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("kbd"))
        async with first_tcp:
            first = local_label(first_tcp.socket)
            async with UsbredirGuest(first_tcp, peer="first hypervisor") as guest:
                await guest.wait_device()
                logs = Logs(caplog)
                second_tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("kbd"))
                async with second_tcp:
                    second = local_label(second_tcp.socket)
                    received, _how = await read_to_end(second_tcp)
                assert received == b""
                await logs.one_refusal(ROUTE_LOG, f"route kbd: refused hypervisor {second}", "in use", first)
                # the first hypervisor keeps working
                status, device = await guest.control(0x80, 6, 0x0100, 0, 18)  # GET_DESCRIPTOR(DEVICE)
                assert status == Status.SUCCESS and struct.unpack_from("<HH", device, 8) == (0x1209, 0x0002)
        await assert_undisturbed(lab)
        route = lab.gateway.snapshot()["routes"][0]
        assert route["refusals"] == 1 and route["channels_served"] == 2


# ================================================= a hostile client's usbredir
def _header(size: int, msg_type: int, length: int) -> bytes:
    return struct.pack("<IIQ" if size == 16 else "<III", msg_type, length, 7)


BAD_USBREDIR = {
    "unknown-type": lambda size: _header(size, 0xDEAD, 0),
    # interface_info's type header is 132 bytes; 3 is shorter than that
    "bad-length": lambda size: _header(size, MsgType.INTERFACE_INFO, 3) + b"abc",
}


@pytest.mark.parametrize("bad", sorted(BAD_USBREDIR))
async def test_malformed_usbredir_from_a_client_never_reaches_the_hypervisor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: str
) -> None:
    async with lab_with(tmp_path, EVIL) as lab, hostile(lab) as fake:
        guest_tcp = await trio.open_tcp_stream("127.0.0.1", lab.route_port("evil"))
        async with guest_tcp:
            guest = UsbredirConnection(Role.GUEST)
            await guest_tcp.send_all(guest.hello_bytes())
            request = await fake.next_open()
            await fake.send(t.ChannelOpened(request.channel_id))
            stream, _me, result, trailing = await fake.attach(request.channel_id, request.token)
            try:
                assert result.ok, result
                # a real host hello first, then learn the layout from the guest's hello
                host = UsbredirConnection(Role.HOST)
                host_hello = host.hello_bytes()
                await stream.send_all(host_hello)
                if trailing:
                    host.receive_data(trailing)
                with trio.fail_after(END_WITHIN_S):
                    while (event := host.next_event()) is NEED_DATA:
                        host.receive_data(await stream.receive_some(65536))
                assert isinstance(event, Hello)
                # the hypervisor has the host's hello ...
                got = bytearray()
                with trio.fail_after(END_WITHIN_S):
                    while len(got) < len(host_hello):
                        chunk = await guest_tcp.receive_some(65536)
                        assert chunk, "closed before the host hello arrived"
                        got += chunk
                logs = Logs(caplog)
                # ... then the client sends something QEMU would abort on
                await stream.send_all(BAD_USBREDIR[bad](host.header_size))
                rest, _how = await read_to_end(guest_tcp)
                assert bytes(got) + rest == host_hello  # not one byte of it
                await read_to_end(stream)  # the client's data connection ends too
            finally:
                await stream.aclose()
        guest.receive_data(got)
        guest.receive_data(b"")
        assert isinstance(guest.next_event(), Hello) and guest.next_event() is CLOSED
        await logs.one_refusal(ROUTE_LOG, "route evil: client thin-02", "malformed usbredir", level=logging.ERROR)
        closed = await fake.wait_closed(request.channel_id)  # the client is told its channel ended
        assert "malformed usbredir" in closed.reason
        await assert_undisturbed(lab, also_online=["thin-02"])
        route = {r["name"]: r for r in lab.gateway.snapshot()["routes"]}["evil"]
        assert route["state"] == "idle" and "malformed usbredir" in route["last_end"]


async def test_revocation_ends_a_live_session(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with lab_with(tmp_path, heartbeat_interval_s=0.2, heartbeat_timeout_s=5.0) as lab:
        pki.issue_client(pki_dir(lab), "thin-02")
        live = FakeClient(lab, "thin-02")
        await live.connect(inventory=[])
        try:
            await until(lambda: "thin-02" in {c["identity"] for c in lab.gateway.snapshot()["clients"]}, "online")
            pki.revoke(pki_dir(lab), "thin-02")
            await until(lambda: "thin-02" not in {c["identity"] for c in lab.gateway.snapshot()["clients"]}, "gone")
        finally:
            await live.aclose()
        assert "thin-02" in caplog.text and "certificate revoked; closing its session" in caplog.text
        await assert_undisturbed(lab)


async def test_a_silent_client_is_dropped_after_the_heartbeat_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that says hello and then never answers: the gateway's heartbeats
    go unanswered, and after the timeout its session (only its) ends."""
    async with lab_with(tmp_path, heartbeat_interval_s=0.5, heartbeat_timeout_s=3.0) as lab:
        pki.issue_client(pki_dir(lab), "thin-02")
        silent = FakeClient(lab, "thin-02")
        await silent.connect(inventory=[])
        logs = Logs(caplog)
        heartbeats = 0
        try:
            with trio.fail_after(30):  # a safety net only: the gateway's own timer ends it
                while (event := await silent.next_event()) is not t.CLOSED:
                    assert isinstance(event, t.Heartbeat), event
                    heartbeats += 1
        finally:
            await silent.aclose()
        assert heartbeats >= 1
        await logs.one_refusal(TUNNEL_LOG, f"thin-02 ({silent.me})", "no sign of life for 3 s; closing")
        await logs.wait_for(TUNNEL_LOG, "client thin-02 offline", "no sign of life", level=logging.INFO)
        await assert_undisturbed(lab)
