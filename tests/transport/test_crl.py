"""redirgate.transport.crl: a CRL is trusted because our CA signed it, and never replaced by an older one."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from redirgate.gateway import pki
from redirgate.transport import CrlError, NewestCrl, parse_crl


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_newest_crl_wins_whatever_order_it_comes_in(tmp_path: Path) -> None:
    ca_dir = tmp_path / "pki"
    pki.init_ca(ca_dir)
    ca = load(ca_dir / "ca-cert.pem")
    gw = load(pki.issue_gateway(ca_dir, "gw.example").cert)
    before = parse_crl((ca_dir / "crl.pem").read_bytes(), ca, source="before")
    pki.revoke(ca_dir, "gw.example", kind=pki.CertKind.GATEWAY)
    after = parse_crl((ca_dir / "crl.pem").read_bytes(), ca, source="after")
    assert after.number > before.number and after.revokes(gw) and not before.revokes(gw)
    assert parse_crl(after.der, ca, source="DER as sent on the wire") == after
    view = NewestCrl(ca)
    assert view.revoking(gw) is None
    assert view.offer(after, "the gateway")
    assert not view.offer(before, "a gateway that sends the CRL from before its revocation")
    assert view.revoking(gw) is after and view.source == "the gateway"


def test_a_crl_from_another_ca_or_garbage_is_refused(tmp_path: Path) -> None:
    ours, other = tmp_path / "ours", tmp_path / "other"
    pki.init_ca(ours, common_name="redirgate CA")
    pki.init_ca(other, common_name="redirgate CA")  # the same name, another key
    ca = load(ours / "ca-cert.pem")
    with pytest.raises(CrlError, match="not signed by our CA"):
        parse_crl((other / "crl.pem").read_bytes(), ca, source="the gateway")
    with pytest.raises(CrlError, match="not a CRL"):
        parse_crl(b"\x30\x03\x02\x01\x00", ca, source="the gateway")


def test_a_local_crl_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    ca_dir = tmp_path / "pki"
    pki.init_ca(ca_dir)
    ca = load(ca_dir / "ca-cert.pem")
    gw = load(pki.issue_gateway(ca_dir, "gw.example").cert)
    local = tmp_path / "client-crl.pem"
    local.write_bytes((ca_dir / "crl.pem").read_bytes())
    view = NewestCrl(ca, local)
    assert view.revoking(gw) is None
    pki.revoke(ca_dir, "gw.example", kind=pki.CertKind.GATEWAY)
    local.write_bytes((ca_dir / "crl.pem").read_bytes())
    crl = view.revoking(gw)
    assert crl is not None and view.source == str(local)
    local.write_bytes(b"half a copy")  # a bad later version: the newest good CRL stays
    assert view.revoking(gw) is crl
    stale = tmp_path / "stale"
    pki.init_ca(stale)
    pki.resign_crl(stale, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=5), valid_days=1)
    assert parse_crl((stale / "crl.pem").read_bytes(), load(stale / "ca-cert.pem"), source="x").stale()
