"""What one returning client's TLS handshake costs the gateway, by what it is made of (issue 15's herd).

``python bench/scale_handshake.py [--handshakes N] [--rounds R]``: mutual
TLS 1.3 handshakes between the gateway's tunnel context
(``transport.server_context``) and simulated clients' contexts (the scale
bench's cached PKI: ECDSA P-256 keys, a chain of one under the CA), in
memory (``ssl.MemoryBIO``: no sockets, no event loop), so only what OpenSSL
and the post-handshake check cost is timed: the server side's
``do_handshake`` calls (``time.thread_time``) per handshake, for

* the tunnel context as it is (the client offers X25519 first),
* the same plus ``verify_peer`` (the certificate parsed again, the CRL
  looked at: a stat of crl.pem, twice, and the identity),
* the key exchange group P-256 only instead of X25519 (the client's
  key_share is X25519: a HelloRetryRequest),
* without ``VERIFY_X509_STRICT``,
* no client certificate asked (a lower bound, not an option: mutual TLS is
  the tunnel's identity),

interleaved over R rounds (median and range), and ``verify_peer`` and one
CRL stat alone (µs).  Nothing is asserted.
"""

from __future__ import annotations

import os
import ssl
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.relay_setup import machine
from bench.report import emit, script_arguments

CLIENTS = 50


def _pair(server: ssl.SSLContext, client: Any, post: Callable[[ssl.SSLObject], object] | None) -> float:
    """One handshake in memory; the server side's CPU seconds (and `post`'s)."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.ssl_context.wrap_bio(c_in, c_out, server_side=False, server_hostname=client.server_name)
    spent, c_done, s_done = 0.0, False, False
    while not (c_done and s_done):
        if not c_done:
            try:
                cli.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not s_done:
            t0 = time.thread_time()
            try:
                srv.do_handshake()
                s_done = True
            except ssl.SSLWantReadError:
                pass
            spent += time.thread_time() - t0
        c_in.write(s_out.read())
    if post is not None:
        t0 = time.thread_time()
        post(srv)
        spent += time.thread_time() - t0
    return spent


def run(handshakes: int, rounds: int) -> dict[str, Any]:
    from bench.scale import ensure_pki
    from bench.scale_peers import client_name
    from redirgate.cli.lab import GATEWAY_NAME
    from redirgate.gateway import pki
    from redirgate.gateway.pki.revocation import RevocationList
    from redirgate.transport import PeerKind, client_context, server_context, verify_peer

    base, _, _ = ensure_pki(CLIENTS)
    ca = base / "ca-cert.pem"
    gw = base / "gateways" / GATEWAY_NAME
    clients = []
    for i in range(CLIENTS):
        d = pki.client_dir(base, client_name(i))
        clients.append(client_context(d / "client-cert.pem", d / "client-key.pem", ca, GATEWAY_NAME))
    crl = RevocationList(base / "crl.pem", ca)

    def tunnel() -> ssl.SSLContext:
        return server_context(gw / "server-cert.pem", gw / "server-key.pem", ca)

    def check(srv: ssl.SSLObject) -> None:
        verify_peer(srv.getpeercert(binary_form=True), peer="bench", kind=PeerKind.CLIENT, revocation=crl)

    p256, loose, anonymous = tunnel(), tunnel(), tunnel()
    p256.set_ecdh_curve("prime256v1")
    loose.verify_flags &= ~ssl.VERIFY_X509_STRICT
    anonymous.verify_mode = ssl.CERT_NONE
    plain = tunnel()
    variants: list[tuple[str, ssl.SSLContext, Callable[[ssl.SSLObject], object] | None]] = [
        ("tunnel context (X25519), handshake", plain, None),
        ("  + verify_peer (parse, CRL, identity)", plain, check),
        ("  key exchange P-256 only (HelloRetryRequest)", p256, None),
        ("  without VERIFY_X509_STRICT", loose, None),
        ("  no client certificate (lower bound)", anonymous, None),
    ]
    per: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    for _ in range(rounds):
        for label, ctx, post in variants:
            for i in range(10):  # warm
                _pair(ctx, clients[i % CLIENTS], post)
            total = sum(_pair(ctx, clients[i % CLIENTS], post) for i in range(handshakes))
            per[label].append(1e3 * total / handshakes)
    pem = (pki.client_dir(base, client_name(0)) / "client-cert.pem").read_bytes()
    cert_der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)  # what the gateway gets
    micro: dict[str, float] = {}
    for label, fn in (
        ("verify_peer, µs", lambda: verify_peer(cert_der, peer="b", kind=PeerKind.CLIENT, revocation=crl)),
        ("one CRL stat (RevocationList.refresh), µs", crl.refresh),
    ):
        t0 = time.thread_time()
        for _ in range(20_000):
            fn()
        micro[label] = 1e6 * (time.thread_time() - t0) / 20_000
    return {
        "handshakes": handshakes,
        "rounds": rounds,
        "ms": per,
        "micro": micro,
        "machine": machine(),
        "loadavg": os.getloadavg(),
    }


def table(result: dict[str, Any]) -> str:
    mach = result["machine"]
    lines = [
        "scale handshake: the gateway side's CPU per mutual TLS 1.3 handshake, in memory, ms "
        f"({result['handshakes']} handshakes x {result['rounds']} rounds, interleaved; median [min-max])",
        f"  {mach['cpu']}, Python {mach['python']}, {mach['openssl']}; load average {result['loadavg'][0]:.2f}",
        "",
    ]
    for label, values in result["ms"].items():
        lines.append(f"{label:<52}{statistics.median(values):8.3f}  [{min(values):.3f}-{max(values):.3f}]")
    lines.append("")
    for label, value in result["micro"].items():
        lines.append(f"{label:<52}{value:8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = script_arguments(__doc__, "fewer handshakes", runs=False)
    parser.add_argument("--handshakes", type=int, default=300, help="handshakes per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    emit(run(100 if args.quick else args.handshakes, args.rounds), table, args.json)


if __name__ == "__main__":
    main()
