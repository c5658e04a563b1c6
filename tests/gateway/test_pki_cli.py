"""`redirgate pki ...` as a user runs it (a real process per command)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from redirgate.transport import PeerKind, identity_from_certificate


def redirgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "redirgate.cli", *args], capture_output=True, text=True, timeout=60)


def test_pki_commands_end_to_end(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    for argv in (
        ("pki", "init", "--dir", d),
        ("pki", "issue-gateway", "--dir", d, "--name", "gw.lab", "--ip", "127.0.0.1"),
        ("pki", "issue-client", "--dir", d, "thin1"),
        ("pki", "issue-hypervisor", "--dir", d, "hv1"),
    ):
        out = redirgate(*argv)
        assert out.returncode == 0, out.stderr
    hv = tmp_path / "pki" / "hypervisors" / "hv1"
    assert "tls-creds-x509" in out.stdout and f"dir={hv}" in out.stdout
    cert = x509.load_pem_x509_certificate((tmp_path / "pki/clients/thin1/client-cert.pem").read_bytes())
    assert identity_from_certificate(cert, PeerKind.CLIENT) == "thin1"
    assert stat.S_IMODE((hv / "client-key.pem").stat().st_mode) == 0o600

    again = redirgate("pki", "issue-client", "--dir", d, "thin1")
    assert again.returncode == 1 and "already exists" in again.stderr and "--force" in again.stderr
    assert redirgate("pki", "issue-client", "--dir", d, "--force", "thin1").returncode == 0

    revoked = redirgate("pki", "revoke", "--dir", d, "thin1")
    assert revoked.returncode == 0 and "revoked client thin1" in revoked.stdout
    missing = redirgate("pki", "revoke", "--dir", d, "nobody")
    assert missing.returncode == 1 and "nobody" in missing.stderr
    assert redirgate("pki", "revoke", "--dir", d, "--hypervisor", "hv1").returncode == 0
    assert redirgate("pki", "issue-client", "--dir", str(tmp_path / "nothing"), "x").returncode == 1
    bad = redirgate("pki", "issue-client", "--dir", d, "bad name")
    assert bad.returncode == 1 and "invalid name" in bad.stderr


def test_pki_list_shows_expiry_and_revocation(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    for argv in (
        ("pki", "init", "--dir", d),
        ("pki", "issue-client", "--dir", d, "thin1", "--days", "10"),
        ("pki", "issue-client", "--dir", d, "thin2"),
        ("pki", "revoke", "--dir", d, "thin2"),
    ):
        assert redirgate(*argv).returncode == 0
    out = redirgate("pki", "list", "--dir", d)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[1]: line.split() for line in out.stdout.splitlines()[1:] if not line.startswith("ca ")}
    assert rows["thin1"][0] == "client" and rows["thin1"][4] == "expiring" and int(rows["thin1"][3]) in (9, 10)
    assert rows["thin2"][4] == "revoked"
    import json

    listed = json.loads(redirgate("pki", "list", "--dir", d, "--json").stdout)
    assert {r["kind"] for r in listed} == {"ca", "client"} and all(r["not_after"] for r in listed)
    missing = redirgate("pki", "list", "--dir", str(tmp_path / "none"))
    assert missing.returncode == 1 and "no CA here" in missing.stderr and "Traceback" not in missing.stderr


def test_the_ca_stays_on_the_admin_machine_request_sign_revoke(tmp_path: Path) -> None:
    """The gateway host makes its key and a CSR; the admin machine signs it; the key never travels."""
    from redirgate.gateway import pki

    admin, gw_host = tmp_path / "admin-pki", tmp_path / "gw-host"
    assert redirgate("pki", "init", "--dir", str(admin)).returncode == 0
    made = redirgate("pki", "request", "--out", str(gw_host), "--gateway", "gw.lab", "--ip", "127.0.0.1")
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in gw_host.iterdir()) == ["request.csr", "server-key.pem"]
    assert stat.S_IMODE((gw_host / "server-key.pem").stat().st_mode) == 0o600
    # the admin says what it signs; a request for another kind is refused
    wrong = redirgate("pki", "sign", "--dir", str(admin), "--client", str(gw_host / "request.csr"))
    assert wrong.returncode == 1 and "request.csr" in wrong.stderr and "Traceback" not in wrong.stderr
    signed = redirgate("pki", "sign", "--dir", str(admin), "--gateway", str(gw_host / "request.csr"))
    assert signed.returncode == 0, signed.stderr
    folder = admin / "gateways" / "gw.lab"
    assert sorted(p.name for p in folder.iterdir()) == ["ca-cert.pem", "server-cert.pem"]  # no key on the admin side
    cert = x509.load_pem_x509_certificate((folder / "server-cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.lab"] and [
        str(i) for i in san.get_values_for_type(x509.IPAddress)
    ] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    # the certificate fits the key that stayed on the gateway host: a real TLS context takes the pair
    from redirgate.transport import tls_file_problems

    assert (
        tls_file_problems(cert=folder / "server-cert.pem", key=gw_host / "server-key.pem", ca=admin / "ca-cert.pem")
        == []
    )
    # a client request, signed as a client
    client = tmp_path / "thin"
    assert redirgate("pki", "request", "--out", str(client), "--client", "thin-07").returncode == 0
    assert redirgate("pki", "sign", "--dir", str(admin), "--client", str(client / "request.csr")).returncode == 0
    issued = x509.load_pem_x509_certificate((admin / "clients/thin-07/client-cert.pem").read_bytes())
    assert identity_from_certificate(issued, PeerKind.CLIENT) == "thin-07"
    # pki list and pki revoke know the signed gateway
    revoked = redirgate("pki", "revoke", "--dir", str(admin), "--gateway", "gw.lab")
    assert revoked.returncode == 0 and "revoked gateway gw.lab" in revoked.stdout, revoked.stderr
    assert [e.serial for e in pki.read_revoked(admin)] == [cert.serial_number]
    fresh = redirgate("pki", "crl", "--dir", str(admin), "--days", "7")
    assert fresh.returncode == 0, fresh.stderr
    crl = x509.load_pem_x509_crl((admin / "crl.pem").read_bytes())
    assert [r.serial_number for r in crl] == [cert.serial_number] and crl.next_update_utc is not None
    assert 6 <= (crl.next_update_utc - crl.last_update_utc).days <= 7
