"""What is wrong with a set of TLS files, found before any listener or dial.

`tls_file_problems(cert=..., key=..., ca=...)` reads each PEM file the way
the TLS contexts in :mod:`.tls` will, and returns one `(role, reason)` per
mistake instead of letting a context constructor raise a bare
``ssl.SSLError`` later: a file that is not PEM, a key that does not match
its certificate, a private key that group or others may read.
`crl_problems` does the same for a CRL: missing, unreadable, not signed by
the CA, or stale (past its nextUpdate).
The gateway's and the client's `check` commands (and their `run`, before
they start anything) call these; a reload calls them before it swaps
contexts.  Pure file reading: no sockets, no state.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from redirgate.transport.crl import CrlError, parse_crl

__all__ = ["crl_problems", "key_mode_problem", "tls_file_problems"]


def _read(path: Path) -> tuple[bytes | None, str | None]:
    try:
        return path.read_bytes(), None
    except FileNotFoundError:
        return None, f"file {path} does not exist"
    except IsADirectoryError:
        return None, f"{path} is a folder, not a file"
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"


def _certificates(path: Path) -> tuple[list[x509.Certificate], str | None]:
    data, problem = _read(path)
    if data is None:
        return [], problem
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        return [], f"{path} holds no PEM certificate"
    return certs, None


def key_mode_problem(path: Path) -> str | None:
    """A private key that group or others may read (what ssh refuses too)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_IMODE(mode) & 0o077:
        return f"{path} may be read by group or others (mode {stat.S_IMODE(mode):04o}); chmod 600 it"
    return None


def tls_file_problems(*, cert: Path, key: Path, ca: Path) -> list[tuple[str, str]]:
    """Every mistake in a certificate + key + CA triple, as (role, reason)."""
    problems: list[tuple[str, str]] = []
    certs, problem = _certificates(cert)
    if problem:
        problems.append(("cert", problem))
    _cas, problem = _certificates(ca)
    if problem:
        problems.append(("ca", problem))
    data, problem = _read(key)
    private = None
    if data is None:
        problems.append(("key", problem or "unreadable"))
    else:
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            reason = (
                "is encrypted (a service cannot type its password)"
                if isinstance(exc, TypeError)
                else "holds no PEM private key"
            )
            problems.append(("key", f"{key} {reason}"))
        mode = key_mode_problem(key)
        if mode:
            problems.append(("key", mode))
    if certs and private is not None:
        ours = (
            certs[0]
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        theirs = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if ours != theirs:
            problems.append(("key", f"{key} does not match the certificate {cert}"))
    if not problems:
        # what OpenSSL itself says (a chain it refuses, an unsupported key)
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
            ctx.load_verify_locations(cafile=os.fspath(ca))
        except (ssl.SSLError, OSError) as exc:
            problems.append(("cert", f"OpenSSL refuses {cert} with {key}: {getattr(exc, 'reason', None) or exc}"))
    return problems


def crl_problems(crl: Path, ca: Path, *, stale_ok: bool = False) -> list[str]:
    """A CRL that is missing, does not parse or is not signed by `ca`, or
    (unless `stale_ok`) is past its nextUpdate."""
    data, problem = _read(crl)
    if data is None:
        return [f'{problem or "unreadable"} (the CA\'s crl.pem; crl = "" turns revocation off)']
    cas, _ = _certificates(ca)
    if not cas:
        try:
            x509.load_pem_x509_crl(data)
        except ValueError:
            return [f"{crl} holds no PEM CRL"]
        return []  # the CA's own problem is reported with it
    try:
        signed = parse_crl(data, cas[0], source=str(crl))
    except CrlError as exc:
        if "not a CRL" in exc.reason:
            return [f"{crl} holds no PEM CRL"]
        return [f"{crl} is not signed by the CA {ca}"]
    if not stale_ok and signed.stale():
        assert signed.next_update is not None
        return [
            f"{crl} is stale: its nextUpdate {signed.next_update:%Y-%m-%d %H:%M}Z has passed, so new handshakes "
            "would be refused; re-sign it on the CA machine (redirgate pki crl --dir PKI) and copy it here, "
            'or set stale_crl = "warn"'
        ]
    return []
