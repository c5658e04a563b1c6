"""redirgate.gateway.pki: profiles, file modes, no-overwrite, revocation and CRL reload.

Certificates are checked with cryptography's own verifier and with the
real `openssl verify` (strict X.509, purpose, CRL), never by re-reading our
own expectations back.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from redirgate.gateway import pki
from redirgate.transport import IdentityError, PeerKind, identity_from_certificate
from tests.support.system import require_system


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    pki.init_ca(directory)
    return directory


def openssl_verify(ca_dir: Path, cert: Path, purpose: str, *, crl: bool = False) -> subprocess.CompletedProcess[str]:
    openssl = require_system("openssl")
    argv = [openssl, "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(ca_dir / "ca-cert.pem")]
    if crl:
        argv += ["-crl_check", "-CRLfile", str(ca_dir / "crl.pem")]
    return subprocess.run([*argv, str(cert)], capture_output=True, text=True, timeout=30)


def test_ca_profile(ca_dir: Path) -> None:
    cert = load(ca_dir / "ca-cert.pem")
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key)
    years = (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365.25
    assert 9.9 < years < 10.1
    assert mode(ca_dir / "ca-key.pem") == 0o600
    assert mode(ca_dir / "ca-cert.pem") == 0o644
    assert json.loads((ca_dir / "revoked.json").read_text()) == []
    assert list(x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())) == []


def test_keys_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        pki.init_ca(tmp_path)
        issued = pki.issue_client(tmp_path, "alice")
    finally:
        os.umask(old)
    assert mode(tmp_path / "ca-key.pem") == 0o600
    assert mode(issued.key) == 0o600


def test_nothing_is_overwritten_without_force(ca_dir: Path) -> None:
    key_before = (ca_dir / "ca-key.pem").read_bytes()
    with pytest.raises(pki.KeyExists) as info:
        pki.init_ca(ca_dir)
    assert info.value.path.endswith("ca-key.pem") and "--force" in info.value.reason
    assert (ca_dir / "ca-key.pem").read_bytes() == key_before

    first = pki.issue_client(ca_dir, "alice")
    client_key = first.key.read_bytes()
    with pytest.raises(pki.KeyExists):
        pki.issue_client(ca_dir, "alice")
    assert first.key.read_bytes() == client_key

    second = pki.issue_client(ca_dir, "alice", force=True)
    assert second.key.read_bytes() != client_key
    assert second.serial != first.serial
    assert mode(second.key) == 0o600
    assert sorted(p.name for p in second.key.parent.iterdir()) == ["ca-cert.pem", "client-cert.pem", "client-key.pem"]


def test_gateway_certificate(ca_dir: Path) -> None:
    issued = pki.issue_gateway(ca_dir, "gw.example.org", dns_names=["gw"], ips=["127.0.0.1", "::1"])
    cert = load(issued.cert)
    assert issued.cert == ca_dir / "gateways" / "gw.example.org" / "server-cert.pem"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.example.org", "gw"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert 729 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 731
    assert mode(issued.key) == 0o600
    # cryptography's RFC 5280 verifier, as a TLS client would
    store = x509.verification.Store([load(ca_dir / "ca-cert.pem")])
    verifier = x509.verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName("gw.example.org"))
    verifier.verify(cert, [])
    assert openssl_verify(ca_dir, issued.cert, "sslserver").returncode == 0


@pytest.mark.parametrize("kind", [PeerKind.CLIENT, PeerKind.HYPERVISOR])
def test_identity_certificates(ca_dir: Path, kind: PeerKind) -> None:
    issue = pki.issue_client if kind is PeerKind.CLIENT else pki.issue_hypervisor
    issued = issue(ca_dir, "thin-07.lab")
    cert = load(issued.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "thin-07.lab"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:redirgate:{kind.value}:thin-07.lab"]
    assert identity_from_certificate(cert, kind) == "thin-07.lab"
    other = PeerKind.HYPERVISOR if kind is PeerKind.CLIENT else PeerKind.CLIENT
    with pytest.raises(IdentityError):
        identity_from_certificate(cert, other)
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment  # QEMU/GnuTLS checks both
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    folder = ca_dir / ("clients" if kind is PeerKind.CLIENT else "hypervisors") / "thin-07.lab"
    # QEMU's tls-creds-x509 endpoint=client reads exactly these names from dir=
    assert {p.name for p in folder.iterdir()} == {"ca-cert.pem", "client-cert.pem", "client-key.pem"}
    assert (folder / "ca-cert.pem").read_bytes() == (ca_dir / "ca-cert.pem").read_bytes()
    store = x509.verification.Store([load(ca_dir / "ca-cert.pem")])
    x509.verification.PolicyBuilder().store(store).build_client_verifier().verify(cert, [])
    assert openssl_verify(ca_dir, issued.cert, "sslclient").returncode == 0


@pytest.mark.parametrize("name", ["", "-x", "a/b", "..", "a b", "x" * 65, "é"])
def test_invalid_names_are_refused(ca_dir: Path, name: str) -> None:
    with pytest.raises(pki.PkiInvalid):
        pki.issue_client(ca_dir, name)


def test_invalid_gateway_names_and_ips(ca_dir: Path) -> None:
    with pytest.raises(pki.PkiInvalid, match="DNS"):
        pki.issue_gateway(ca_dir, "bad_host!")
    with pytest.raises(pki.PkiInvalid, match="IP"):
        pki.issue_gateway(ca_dir, "gw", ips=["300.1.1.1"])


def test_missing_ca_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiMissing) as info:
        pki.issue_client(tmp_path, "alice")
    assert info.value.path == str(tmp_path / "ca-cert.pem")


def test_leaf_never_outlives_the_ca(tmp_path: Path) -> None:
    pki.init_ca(tmp_path, valid_days=30)
    issued = pki.issue_client(tmp_path, "alice", valid_days=365)
    assert issued.not_valid_after == load(tmp_path / "ca-cert.pem").not_valid_after_utc


def test_revoke_writes_list_and_crl(ca_dir: Path) -> None:
    alice = pki.issue_client(ca_dir, "alice")
    bob = pki.issue_client(ca_dir, "bob")
    entry = pki.revoke(ca_dir, "alice")
    assert entry.serial == alice.serial and entry.kind is pki.CertKind.CLIENT
    again = pki.revoke(ca_dir, "alice")  # idempotent
    assert again == entry
    assert [(e.name, e.serial) for e in pki.read_revoked(ca_dir)] == [("alice", alice.serial)]
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.is_signature_valid(load(ca_dir / "ca-cert.pem").public_key())
    assert [r.serial_number for r in crl] == [alice.serial]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    # the real openssl agrees
    refused = openssl_verify(ca_dir, alice.cert, "sslclient", crl=True)
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    assert openssl_verify(ca_dir, bob.cert, "sslclient", crl=True).returncode == 0
    with pytest.raises(pki.PkiMissing):
        pki.revoke(ca_dir, "nobody")
    hv = pki.issue_hypervisor(ca_dir, "hv1")
    assert pki.revoke(ca_dir, "hv1", kind=PeerKind.HYPERVISOR).serial == hv.serial


def test_revocation_list_reloads_when_the_crl_changes(ca_dir: Path) -> None:
    alice = load(pki.issue_client(ca_dir, "alice").cert)
    bob = load(pki.issue_client(ca_dir, "bob").cert)
    rl = pki.RevocationList.for_directory(ca_dir)
    assert not rl.is_revoked(alice) and not rl.is_revoked(bob)
    assert rl.reloads == 1
    assert not rl.is_revoked(alice)
    assert rl.reloads == 1  # unchanged file: no reload
    pki.revoke(ca_dir, "alice")
    assert rl.is_revoked(alice) and not rl.is_revoked(bob)
    assert rl.reloads == 2


def test_revocation_list_refuses_a_crl_from_another_ca(
    ca_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice = load(pki.issue_client(ca_dir, "alice").cert)
    pki.revoke(ca_dir, "alice")
    rl = pki.RevocationList.for_directory(ca_dir)
    assert rl.is_revoked(alice)
    # someone drops in a CRL signed by another CA that revokes nothing
    other = tmp_path / "other"
    pki.init_ca(other)
    forged = (other / "crl.pem").read_bytes()
    (ca_dir / "crl.pem").write_bytes(forged)
    with caplog.at_level(logging.ERROR, logger="redirgate.gateway.pki.revocation"):
        assert rl.is_revoked(alice)  # the previous list stays in force
        assert rl.is_revoked(alice)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "not signed by our CA" in errors[0].getMessage()
    with pytest.raises(pki.PkiInvalid, match="not signed by our CA"):
        pki.RevocationList.for_directory(ca_dir)
    (ca_dir / "crl.pem").write_bytes(b"garbage")
    with pytest.raises(pki.PkiInvalid, match="unreadable CRL"):
        pki.RevocationList.for_directory(ca_dir)


def test_expired_certificate_can_be_made_for_tests(ca_dir: Path) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    issued = pki.issue_client(ca_dir, "old", now=past, valid_days=1)
    out = openssl_verify(ca_dir, issued.cert, "sslclient")
    assert out.returncode != 0 and "expired" in out.stdout + out.stderr


def test_gateway_certificates_can_be_revoked(ca_dir: Path) -> None:
    gw = pki.issue_gateway(ca_dir, "gw.example")
    entry = pki.revoke(ca_dir, "gw.example", kind=pki.CertKind.GATEWAY)
    assert entry.serial == gw.serial and entry.kind is pki.CertKind.GATEWAY
    assert pki.read_revoked(ca_dir) == [entry]
    refused = openssl_verify(ca_dir, gw.cert, "sslserver", crl=True)
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    assert [item.revoked for item in pki.list_certificates(ca_dir) if item.kind == "gateway"] == [True]


def test_a_missing_crl_is_refused_at_start(ca_dir: Path) -> None:
    (ca_dir / "crl.pem").unlink()
    with pytest.raises(pki.PkiMissing, match="CRL missing"):
        pki.RevocationList.for_directory(ca_dir)


def test_a_stale_crl_refuses_or_warns_by_policy(ca_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    alice = load(pki.issue_client(ca_dir, "alice").cert)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    pki.resign_crl(ca_dir, now=long_ago, valid_days=1)
    refuse = pki.RevocationList.for_directory(ca_dir)
    warn = pki.RevocationList(ca_dir / "crl.pem", ca_dir / "ca-cert.pem", stale="warn")
    with caplog.at_level(logging.WARNING, logger="redirgate.gateway.pki.revocation"):
        for _ in range(3):
            reason = refuse.unusable()
            assert reason is not None and "past its nextUpdate" in reason
            assert warn.unusable() is None
    lines = [r for r in caplog.records if "stale" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.ERROR, logging.WARNING], lines  # once per interval each
    assert "every new handshake is refused" in lines[0].getMessage()
    assert warn.stale_accepted == 3 and not refuse.is_revoked(alice)
    pki.resign_crl(ca_dir)  # a fresh CRL is picked up at the next look
    assert refuse.unusable() is None and not refuse.stale()


def test_an_older_crl_does_not_replace_a_newer_one(ca_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    alice = load(pki.issue_client(ca_dir, "alice").cert)
    before = (ca_dir / "crl.pem").read_bytes()
    pki.revoke(ca_dir, "alice")
    rl = pki.RevocationList.for_directory(ca_dir)
    (ca_dir / "crl.pem").write_bytes(before)  # a copy of the CRL from before the revoke
    with caplog.at_level(logging.ERROR, logger="redirgate.gateway.pki.revocation"):
        assert rl.is_revoked(alice)
    assert any("older than" in r.getMessage() for r in caplog.records)
